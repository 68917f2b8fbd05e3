// Builds the Qwen-Image-Edit-2509 and FLUX Kontext example workflows in ComfyUI's real front end and
// saves them as the front end does (same method as tests/integration/browser/build_workflows.js).
//
// usage (from the repository root, with a server running the pack, e.g.
//        `PYTHONPATH=tests/lib python -m dla_harness.server` in another shell):
//   node tests/integration/support/build_qwen_kontext_workflows.js http://127.0.0.1:PORT
// writes workflows/<name>.json (UI format: app.graph.serialize()) and workflows/api/<name>.json
//        (API format: app.graphToPrompt().output) for the four graphs below.

const { runBuilder } = require('../browser/build_workflows.js');

// The files people download for ComfyUI's own Qwen-Image-Edit-2509 and FLUX.1 Kontext templates.
const FILES = {
  qwenDit: 'qwen_image_edit_2509_fp8_e4m3fn.safetensors',
  qwenTe: 'qwen_2.5_vl_7b_fp8_scaled.safetensors',
  qwenVae: 'qwen_image_vae.safetensors',
  kontext: 'flux1-dev-kontext_fp8_scaled.safetensors',
  clipL: 'clip_l.safetensors',
  t5: 't5xxl_fp8_e4m3fn_scaled.safetensors',
  fluxVae: 'ae.safetensors',
  reference: 'dla_subject_reference.png',
};
const SEED = 42;
const QWEN_PROMPT = 'The subject from Picture 1 sitting on a wooden bench in an autumn park, seen from the side, soft morning light.';
const KONTEXT_PROMPT = 'Place this subject on a wooden bench in an autumn park, seen from the side, soft morning light.';

const QWEN_NOTE = [
  'Qwen-Image-Edit-2509 with delayed identity (training-free staging).',
  '',
  `models/diffusion_models/${FILES.qwenDit}`,
  `models/text_encoders/${FILES.qwenTe}   (Load CLIP, type qwen_image)`,
  `models/vae/${FILES.qwenVae}`,
  '',
  'Qwen2.5-VL Joint Encode reads the prompt and the reference together (as the native node),',
  'without reference latents. Reference Latents (DLA) adds the VAE latents (method: index).',
  'Staged KSampler (Advanced): t >= tau1 uses stage 1 (MLLM only, no reference latents),',
  'below tau1 stages 2 and 3 (MLLM + reference latents). More references: image2..image6,',
  'each frame of a batch is a reference ("Picture k"); per-reference resolutions are inputs.',
].join('\n');

const KONTEXT_NOTE = [
  'FLUX.1 Kontext with delayed identity (training-free staging).',
  '',
  `models/diffusion_models/${FILES.kontext}`,
  `models/text_encoders/${FILES.clipL} + ${FILES.t5}   (DualCLIPLoader, type flux)`,
  `models/vae/${FILES.fluxVae}`,
  '',
  'Stage 1 (t >= tau1): the text only. Stage 2: text + reference latents (method: offset).',
  'Stage 3 (t < tau2): the reference latents with the text zeroed (reference-heavy details).',
  'tau1 = 1, tau2 = 0: every step but the first (t = 1, still stage 1) in stage 2; plain Kontext from the first',
  'step: the references in positive_stage1 too (the later stages reuse it).',
].join('\n');

// ---------------------------------------------------------------------------------- Qwen-Image-Edit
function qwenLoaders() {
  return [
    { key: 'unet', type: 'UNETLoader', pos: [0, 0], size: [380, 0], widgets: { unet_name: FILES.qwenDit, weight_dtype: 'default' } },
    { key: 'shift', type: 'ModelSamplingAuraFlow', pos: [0, 130], size: [380, 0], widgets: { shift: 3.0 } },
    { key: 'clip', type: 'CLIPLoader', pos: [0, 240], size: [380, 0], widgets: { clip_name: FILES.qwenTe, type: 'qwen_image', device: 'default' } },
    { key: 'vae', type: 'VAELoader', pos: [0, 390], size: [380, 0], widgets: { vae_name: FILES.qwenVae } },
    { key: 'image', type: 'LoadImage', pos: [0, 500], size: [380, 380], widgets: { image: FILES.reference } },
    { key: 'latent', type: 'EmptySD3LatentImage', pos: [0, 920], size: [380, 0], widgets: { width: 1024, height: 1024, batch_size: 1 } },
  ];
}
const QWEN_LOADER_LINKS = [['unet', 0, 'shift', 'model']];

function qwenStagedNodes(x, y, suffix) {
  return [
    { key: `encode${suffix}`, type: 'DLAQwenCLIPJointEncode', pos: [x, y], size: [420, 260], title: 'Qwen2.5-VL Joint Encode (positive)', widgets: { prompt: QWEN_PROMPT, mllm_resolution: 384 } },
    { key: `encode_neg${suffix}`, type: 'DLAQwenCLIPJointEncode', pos: [x, y + 300], size: [420, 200], title: 'Qwen2.5-VL Joint Encode (negative)', widgets: { prompt: '', mllm_resolution: 384 } },
    { key: `refs${suffix}`, type: 'DLAReferenceLatents', pos: [x + 460, y], size: [380, 0], title: 'Reference Latents (positive)', widgets: { vae_resolution: 1024, reference_latents_method: 'qwen_image_edit_2509 (index)' } },
    { key: `refs_neg${suffix}`, type: 'DLAReferenceLatents', pos: [x + 460, y + 300], size: [380, 0], title: 'Reference Latents (negative)', widgets: { vae_resolution: 1024, reference_latents_method: 'qwen_image_edit_2509 (index)' } },
    {
      key: `sampler${suffix}`, type: 'DLAStagedKSamplerAdvanced', pos: [x + 880, y], size: [340, 0], title: 'Staged KSampler (Advanced, DLA)',
      widgets: { seed: SEED, control_after_generate: 'fixed', steps: 20, cfg: 2.5, sampler_name: 'euler', scheduler: 'simple', denoise: 1.0, tau1: 0.95, tau2: 0.0 },
    },
    { key: `decode${suffix}`, type: 'VAEDecode', pos: [x + 1260, y] },
  ];
}

function qwenStagedLinks(suffix) {
  const s = (key) => `${key}${suffix}`;
  return [
    ['clip', 0, s('encode'), 'clip'],
    ['image', 0, s('encode'), 'image1'],
    ['clip', 0, s('encode_neg'), 'clip'],
    ['image', 0, s('encode_neg'), 'image1'],
    [s('encode'), 0, s('refs'), 'conditioning'],
    ['vae', 0, s('refs'), 'vae'],
    ['image', 0, s('refs'), 'image1'],
    [s('encode_neg'), 0, s('refs_neg'), 'conditioning'],
    ['vae', 0, s('refs_neg'), 'vae'],
    ['image', 0, s('refs_neg'), 'image1'],
    ['shift', 0, s('sampler'), 'model'],
    [s('encode'), 0, s('sampler'), 'positive_stage1'],
    [s('refs'), 0, s('sampler'), 'positive_stage2'],
    [s('refs'), 0, s('sampler'), 'positive_stage3'],
    [s('encode_neg'), 0, s('sampler'), 'negative_stage1'],
    [s('refs_neg'), 0, s('sampler'), 'negative_stage2'],
    [s('refs_neg'), 0, s('sampler'), 'negative_stage3'],
    ['latent', 0, s('sampler'), 'latent_image'],
    [s('sampler'), 0, s('decode'), 'samples'],
    ['vae', 0, s('decode'), 'vae'],
  ];
}

// ---------------------------------------------------------------------------------- FLUX Kontext
function kontextLoaders() {
  return [
    { key: 'unet', type: 'UNETLoader', pos: [0, 0], size: [380, 0], widgets: { unet_name: FILES.kontext, weight_dtype: 'default' } },
    { key: 'clip', type: 'DualCLIPLoader', pos: [0, 130], size: [380, 0], widgets: { clip_name1: FILES.clipL, clip_name2: FILES.t5, type: 'flux', device: 'default' } },
    { key: 'vae', type: 'VAELoader', pos: [0, 300], size: [380, 0], widgets: { vae_name: FILES.fluxVae } },
    { key: 'image', type: 'LoadImage', pos: [0, 410], size: [380, 380], widgets: { image: FILES.reference } },
    { key: 'latent', type: 'EmptySD3LatentImage', pos: [0, 830], size: [380, 0], widgets: { width: 1024, height: 1024, batch_size: 1 } },
    { key: 'text', type: 'CLIPTextEncode', pos: [440, 0], size: [420, 200], title: 'CLIP Text Encode (prompt)', widgets: { text: KONTEXT_PROMPT } },
    { key: 'guidance', type: 'FluxGuidance', pos: [440, 240], size: [420, 0], widgets: { guidance: 2.5 } },
  ];
}
const KONTEXT_LOADER_LINKS = [
  ['clip', 0, 'text', 'clip'],
  ['text', 0, 'guidance', 'conditioning'],
];

function kontextStagedNodes(x, y, suffix) {
  return [
    { key: `refs${suffix}`, type: 'DLAReferenceLatents', pos: [x, y], size: [380, 0], widgets: { vae_resolution: 1024, reference_latents_method: 'flux_kontext (offset)' } },
    { key: `text_off${suffix}`, type: 'ConditioningZeroOut', pos: [x, y + 260], title: 'Stage 1 negative (text zeroed)' },
    { key: `refs_only${suffix}`, type: 'ConditioningZeroOut', pos: [x, y + 340], title: 'Stage 3: references, text zeroed' },
    {
      key: `sampler${suffix}`, type: 'DLAStagedKSamplerAdvanced', pos: [x + 420, y], size: [340, 0], title: 'Staged KSampler (Advanced, DLA)',
      widgets: { seed: SEED, control_after_generate: 'fixed', steps: 20, cfg: 1.0, sampler_name: 'euler', scheduler: 'simple', denoise: 1.0, tau1: 0.95, tau2: 0.2 },
    },
    { key: `decode${suffix}`, type: 'VAEDecode', pos: [x + 800, y] },
  ];
}

function kontextStagedLinks(suffix) {
  const s = (key) => `${key}${suffix}`;
  return [
    ['guidance', 0, s('refs'), 'conditioning'],
    ['vae', 0, s('refs'), 'vae'],
    ['image', 0, s('refs'), 'image1'],
    ['guidance', 0, s('text_off'), 'conditioning'],
    [s('refs'), 0, s('refs_only'), 'conditioning'],
    ['unet', 0, s('sampler'), 'model'],
    ['guidance', 0, s('sampler'), 'positive_stage1'],
    [s('refs'), 0, s('sampler'), 'positive_stage2'],
    [s('refs_only'), 0, s('sampler'), 'positive_stage3'],
    [s('text_off'), 0, s('sampler'), 'negative_stage1'],
    [s('refs_only'), 0, s('sampler'), 'negative_stage2'],
    [s('refs_only'), 0, s('sampler'), 'negative_stage3'],
    ['latent', 0, s('sampler'), 'latent_image'],
    [s('sampler'), 0, s('decode'), 'samples'],
    ['vae', 0, s('decode'), 'vae'],
  ];
}

const save = (key, pos, prefix, title) => ({ key, type: 'SaveImage', pos, size: [520, 580], title, widgets: { filename_prefix: prefix } });

const WORKFLOWS = {
  qwen_image_edit_2509_staged: {
    nodes: [
      { key: 'note', type: 'Note', pos: [0, -300], size: [820, 260], widgets: { 0: QWEN_NOTE }, title: 'Read me' },
      ...qwenLoaders(),
      ...qwenStagedNodes(440, 0, ''),
      save('save', [1700, 110], 'qwen_edit_staged'),
    ],
    links: [...QWEN_LOADER_LINKS, ...qwenStagedLinks(''), ['decode', 0, 'save', 'images']],
  },
  qwen_image_edit_2509_compare: {
    nodes: [
      { key: 'note', type: 'Note', pos: [0, -300], size: [820, 260], widgets: { 0: QWEN_NOTE + '\n\nTop: native TextEncodeQwenImageEditPlus + KSampler. Bottom: staged. Same seed.' }, title: 'Read me' },
      ...qwenLoaders(),
      { key: 'native_pos', type: 'TextEncodeQwenImageEditPlus', pos: [440, 0], size: [420, 260], title: 'Native: TextEncodeQwenImageEditPlus (positive)', widgets: { prompt: QWEN_PROMPT } },
      { key: 'native_neg', type: 'TextEncodeQwenImageEditPlus', pos: [440, 300], size: [420, 200], title: 'Native: TextEncodeQwenImageEditPlus (negative)', widgets: { prompt: '' } },
      {
        key: 'native_sampler', type: 'KSampler', pos: [900, 0], size: [340, 0], title: 'Native KSampler',
        widgets: { seed: SEED, control_after_generate: 'fixed', steps: 20, cfg: 2.5, sampler_name: 'euler', scheduler: 'simple', denoise: 1.0 },
      },
      { key: 'native_decode', type: 'VAEDecode', pos: [1280, 0] },
      save('native_save', [1280, 110], 'qwen_edit_native', 'Native'),
      ...qwenStagedNodes(440, 700, '_staged'),
      save('staged_save', [1700, 810], 'qwen_edit_staged', 'Staged (tau1 0.95)'),
    ],
    links: [
      ...QWEN_LOADER_LINKS,
      ['clip', 0, 'native_pos', 'clip'],
      ['vae', 0, 'native_pos', 'vae'],
      ['image', 0, 'native_pos', 'image1'],
      ['clip', 0, 'native_neg', 'clip'],
      ['vae', 0, 'native_neg', 'vae'],
      ['image', 0, 'native_neg', 'image1'],
      ['shift', 0, 'native_sampler', 'model'],
      ['native_pos', 0, 'native_sampler', 'positive'],
      ['native_neg', 0, 'native_sampler', 'negative'],
      ['latent', 0, 'native_sampler', 'latent_image'],
      ['native_sampler', 0, 'native_decode', 'samples'],
      ['vae', 0, 'native_decode', 'vae'],
      ['native_decode', 0, 'native_save', 'images'],
      ...qwenStagedLinks('_staged'),
      ['decode_staged', 0, 'staged_save', 'images'],
    ],
  },
  flux_kontext_staged: {
    nodes: [
      { key: 'note', type: 'Note', pos: [0, -300], size: [820, 260], widgets: { 0: KONTEXT_NOTE }, title: 'Read me' },
      ...kontextLoaders(),
      ...kontextStagedNodes(900, 0, ''),
      save('save', [1700, 110], 'kontext_staged'),
    ],
    links: [...KONTEXT_LOADER_LINKS, ...kontextStagedLinks(''), ['decode', 0, 'save', 'images']],
  },
  flux_kontext_compare: {
    nodes: [
      { key: 'note', type: 'Note', pos: [0, -300], size: [820, 260], widgets: { 0: KONTEXT_NOTE + '\n\nTop: native Kontext (ReferenceLatent + KSampler). Bottom: staged. Same seed.' }, title: 'Read me' },
      ...kontextLoaders(),
      { key: 'native_scale', type: 'FluxKontextImageScale', pos: [440, 380] },
      { key: 'native_encode', type: 'VAEEncode', pos: [440, 470] },
      { key: 'native_ref', type: 'ReferenceLatent', pos: [900, -120], title: 'Native: ReferenceLatent' },
      { key: 'native_neg', type: 'ConditioningZeroOut', pos: [900, -40], title: 'Native negative' },
      {
        key: 'native_sampler', type: 'KSampler', pos: [1320, -300], size: [340, 0], title: 'Native KSampler',
        widgets: { seed: SEED, control_after_generate: 'fixed', steps: 20, cfg: 1.0, sampler_name: 'euler', scheduler: 'simple', denoise: 1.0 },
      },
      { key: 'native_decode', type: 'VAEDecode', pos: [1700, -300] },
      save('native_save', [2260, -300], 'kontext_native', 'Native'),
      ...kontextStagedNodes(900, 300, '_staged'),
      save('staged_save', [2260, 330], 'kontext_staged', 'Staged (tau 0.95 / 0.2)'),
    ],
    links: [
      ...KONTEXT_LOADER_LINKS,
      ['image', 0, 'native_scale', 'image'],
      ['native_scale', 0, 'native_encode', 'pixels'],
      ['vae', 0, 'native_encode', 'vae'],
      ['guidance', 0, 'native_ref', 'conditioning'],
      ['native_encode', 0, 'native_ref', 'latent'],
      ['guidance', 0, 'native_neg', 'conditioning'],
      ['unet', 0, 'native_sampler', 'model'],
      ['native_ref', 0, 'native_sampler', 'positive'],
      ['native_neg', 0, 'native_sampler', 'negative'],
      ['latent', 0, 'native_sampler', 'latent_image'],
      ['native_sampler', 0, 'native_decode', 'samples'],
      ['vae', 0, 'native_decode', 'vae'],
      ['native_decode', 0, 'native_save', 'images'],
      ...kontextStagedLinks('_staged'),
      ['decode_staged', 0, 'staged_save', 'images'],
    ],
  },
};

runBuilder('build_qwen_kontext_workflows.js', WORKFLOWS);
