// Builds the FLUX.2 [dev] / [klein] and Qwen-Image-Edit-2511 staged example workflows in ComfyUI's real
// front end and saves them as the front end does (same method as tests/integration/browser/build_workflows.js).
//
// usage (from the repository root, with a server running the pack on a ComfyUI that has FLUX.2 and
//        Qwen-Image-Edit-2511, e.g. `PYTHONPATH=tests/lib python -m dla_harness.server` on ComfyUI 0.33):
//   node tests/integration/support/build_flux2_qwen2511_workflows.js http://127.0.0.1:PORT
// writes workflows/<name>.json (UI format: app.graph.serialize()) and workflows/api/<name>.json
//        (API format: app.graphToPrompt().output) for the four graphs below.
//
// Each UI file carries extra.dla_requires: what the graph needs from ComfyUI, machine-readable
// (the tests check it on every ComfyUI they run on; see dla_harness.workflow_prompts.unmet_requirements).

const { runBuilder } = require('../browser/build_workflows.js');

// The files of ComfyUI's own templates (comfyui-workflow-templates: image_flux2_fp8,
// image_flux2_klein_image_edit_4b_distilled, image_qwen_image_edit_2511).
const FILES = {
  flux2Dev: 'flux2_dev_fp8mixed.safetensors',
  mistral: 'mistral_3_small_flux2_fp8.safetensors',
  flux2Vae: 'flux2-vae.safetensors',
  klein: 'flux-2-klein-4b-fp8.safetensors',
  qwen3: 'qwen_3_4b.safetensors',
  qwen2511: 'qwen_image_edit_2511_fp8mixed.safetensors',
  qwenTe: 'qwen_2.5_vl_7b_fp8_scaled.safetensors',
  qwenVae: 'qwen_image_vae.safetensors',
  reference: 'dla_subject_reference.png',
  reference2: 'dla_second_reference.png',
};
const SEED = 42;
const TAU1 = 0.95;
const TAU2 = 0.0;
const TIMING_EXAMPLE = '0.95-0, 1-0.5';
const STRENGTH_EXAMPLE = '1.0, 0.6';
const FLUX2_PROMPT = 'The subject from image 1 sitting on a wooden bench in an autumn park, in the colours and light of image 2, seen from the side, soft morning light.';
const QWEN_PROMPT = 'The subject from Picture 1 sitting on a wooden bench in an autumn park, in the colours and light of Picture 2, seen from the side, soft morning light.';

const FLUX2_NODE_TYPES = ['EmptyFlux2LatentImage', 'Flux2Scheduler'];
const REQUIRES = {
  flux2Dev: {
    feature: 'FLUX.2 [dev]',
    min_comfyui: '0.3.72',
    node_types: FLUX2_NODE_TYPES,
    clip_types: ['flux2'],
    reference_latents_methods: [],
    notice: 'nodes/compat.py::flux2_missing_message',
  },
  flux2Klein: {
    feature: 'FLUX.2 [klein] (Qwen3-4B text encoder)',
    min_comfyui: '0.9.2',
    node_types: FLUX2_NODE_TYPES,
    clip_types: ['flux2'],
    reference_latents_methods: [],
    notice: 'nodes/compat.py::flux2_missing_message',
  },
  qwen2511: {
    feature: "Qwen-Image-Edit-2511 (reference method index_timestep_zero, ComfyUI PR #11340, Dec 2025)",
    min_comfyui: null,
    node_types: [],
    clip_types: [],
    reference_latents_methods: ['index_timestep_zero'],
    notice: 'nodes/qwen_identity.py: Reference Latents (DLA) warns and falls back to index',
  },
};

const RECIPE = [
  `Starting recipe (not tuned on full-size models): stage 1 (t >= tau1 = ${TAU1}) the text only, stage 2 the text`,
  `+ both references, stage 3 = stage 2 (positive_stage3 left unconnected: it reuses stage 2). tau2 = ${TAU2}: no stage 3.`,
  'tau1 = 1 with tau2 = 0: every step but the first (t = 1 exactly, still stage 1) in stage 2; the native graph',
  'from the first step: the references in positive_stage1 too. Lower tau1 = more steps without the',
  'references = more freedom of pose and layout, less copy-paste, less identity.',
];

const FLUX2_DEV_NOTE = [
  'FLUX.2 [dev] with delayed identity (training-free staging). Needs ComfyUI >= 0.3.72.',
  '',
  `models/diffusion_models/${FILES.flux2Dev}`,
  `models/text_encoders/${FILES.mistral}   (Load CLIP, type flux2; or mistral_3_small_flux2_bf16.safetensors)`,
  `models/vae/${FILES.flux2Vae}`,
  '',
  'Conditioning as ComfyUI\'s FLUX.2 template: CLIPTextEncode -> FluxGuidance 4.0; Flux2Scheduler sigmas,',
  'RandomNoise, KSamplerSelect euler, SamplerCustomAdvanced; cfg 1. Reference Latents (DLA) VAE-encodes',
  'image1 (the subject) and image2 (a second reference) at ~1 MP each with the model\'s own method (index).',
  ...RECIPE,
].join('\n');

const FLUX2_DEV_STAGED_NOTE = [
  FLUX2_DEV_NOTE,
  '',
  `reference_timing '${TIMING_EXAMPLE}' (an example, clear it to drop it): image1 is used while t < 0.95 (from stage 2`,
  'to the end), image2 only while t >= 0.5 (an early layout / colour reference). Empty: both references in',
  'every stage that carries them.',
  `reference_strength '${STRENGTH_EXAMPLE}' (an example): image2's tokens get 0.6 of the attention they would get`,
  '(a bias log 0.6 on its keys in every attention layer); 1 = unchanged, 0 = ignored. A ramp over t:',
  "'0.95-0.5:1.0>0.3'. Empty: every reference at strength 1. Needs a ComfyUI whose FLUX runs attention patches (0.33).",
].join('\n');

const FLUX2_KLEIN_NOTE = [
  'FLUX.2 [klein] 4B (distilled) with delayed identity (training-free staging). Needs ComfyUI >= 0.9.2.',
  '',
  `models/diffusion_models/${FILES.klein}   (or flux-2-klein-4b.safetensors)`,
  `models/text_encoders/${FILES.qwen3}   (Load CLIP, type flux2)`,
  `models/vae/${FILES.flux2Vae}`,
  '',
  'As ComfyUI\'s klein 4B distilled edit template: 4 steps (Flux2Scheduler), cfg 1, no FluxGuidance',
  '(klein has no guidance input). The template\'s zeroed negative is never evaluated at cfg 1, so the',
  'negatives are left unconnected. For klein base (flux-2-klein-base-4b): more steps and cfg ~4 with a',
  'negative on every stage. Reference Latents (DLA): image1 subject, image2 second reference, model\'s own method.',
  ...RECIPE,
  'reference_timing is empty: both references in stages 2 and 3 (see flux2_dev_staged for an example).',
  'reference_strength is empty: every reference at strength 1 (see flux2_dev_staged for an example).',
].join('\n');

const QWEN_NOTE = [
  'Qwen-Image-Edit-2511 with delayed identity (training-free staging).',
  'Needs a ComfyUI with the index_timestep_zero reference method (ComfyUI PR #11340, Dec 2025; not in 0.3.64,',
  'where Reference Latents (DLA) warns and falls back to index, the 2509 placement).',
  '',
  `models/diffusion_models/${FILES.qwen2511}   (or qwen_image_edit_2511_bf16.safetensors)`,
  `models/text_encoders/${FILES.qwenTe}   (Load CLIP, type qwen_image)`,
  `models/vae/${FILES.qwenVae}`,
  '',
  'As ComfyUI\'s 2511 template without the Lightning LoRA: ModelSamplingAuraFlow 3.1, 40 steps, cfg 4, euler /',
  'simple, negative = the empty prompt with the same references. The template\'s CFGNorm (strength 1) is left',
  'out (its inputs differ between ComfyUI versions); add it after ModelSamplingAuraFlow if you like.',
  'Qwen2.5-VL Joint Encode reads the prompt with both pictures (Picture 1 subject, Picture 2 second reference);',
  'Reference Latents (DLA) adds their VAE latents with index_timestep_zero set explicitly, as the template does.',
  ...RECIPE,
  'reference_timing is empty: both references in stages 2 and 3 (see flux2_dev_staged for an example).',
  "reference_strength stays empty here: ComfyUI 0.33's Qwen-Image attention ignores an attention patch's mask,",
  'so the node refuses a strength other than 1 on Qwen-Image-Edit (FLUX.2, Kontext and Krea 2 take it).',
].join('\n');

const note = (text, size = [900, 400]) => ({ key: 'note', type: 'Note', pos: [0, -(size[1] + 40)], size, widgets: { 0: text }, title: 'Read me' });
const save = (key, pos, prefix, title) => ({ key, type: 'SaveImage', pos, size: [520, 580], title, widgets: { filename_prefix: prefix } });

// ---------------------------------------------------------------------------------- FLUX.2 (dev and klein)
function flux2Loaders(unet, te) {
  return [
    { key: 'unet', type: 'UNETLoader', pos: [0, 0], size: [380, 0], widgets: { unet_name: unet, weight_dtype: 'default' } },
    { key: 'clip', type: 'CLIPLoader', pos: [0, 130], size: [380, 0], widgets: { clip_name: te, type: 'flux2', device: 'default' } },
    { key: 'vae', type: 'VAELoader', pos: [0, 280], size: [380, 0], widgets: { vae_name: FILES.flux2Vae } },
    { key: 'image', type: 'LoadImage', pos: [0, 390], size: [380, 380], title: 'image1: the subject', widgets: { image: FILES.reference } },
    { key: 'image2', type: 'LoadImage', pos: [0, 810], size: [380, 380], title: 'image2: a second reference', widgets: { image: FILES.reference2 } },
    { key: 'text', type: 'CLIPTextEncode', pos: [440, 0], size: [420, 200], title: 'CLIP Text Encode (prompt)', widgets: { text: FLUX2_PROMPT } },
    { key: 'latent', type: 'EmptyFlux2LatentImage', pos: [440, 520], size: [320, 0], widgets: { width: 1024, height: 1024, batch_size: 1 } },
    { key: 'noise', type: 'RandomNoise', pos: [440, 680], size: [320, 0], widgets: { noise_seed: SEED, control_after_generate: 'fixed' } },
    { key: 'ksampler', type: 'KSamplerSelect', pos: [440, 800], size: [320, 0], widgets: { sampler_name: 'euler' } },
  ];
}

// The text conditioning every stage starts from: FluxGuidance for [dev], the plain text for [klein].
function flux2TextNodes(guidance) {
  return guidance
    ? [{ key: 'guidance', type: 'FluxGuidance', pos: [440, 240], size: [420, 0], widgets: { guidance: 4.0 } }]
    : [];
}

function flux2LoaderLinks(guidance) {
  return [
    ['clip', 0, 'text', 'clip'],
    ...(guidance ? [['text', 0, 'guidance', 'conditioning']] : []),
  ];
}

function flux2StagedNodes(x, y, suffix, steps, timing, strength) {
  return [
    { key: `refs${suffix}`, type: 'DLAReferenceLatents', pos: [x, y], size: [380, 0], title: 'Reference Latents (DLA): image1 + image2', widgets: { vae_resolution: 1024, reference_latents_method: "model's own method (leave unset)" } },
    { key: `scheduler${suffix}`, type: 'Flux2Scheduler', pos: [x, y + 320], size: [380, 0], widgets: { steps, width: 1024, height: 1024 } },
    {
      key: `guider${suffix}`, type: 'DLAStagedGuiderAdvanced', pos: [x + 420, y], size: [360, 0], title: 'Staged Guider (Advanced, DLA)',
      widgets: { cfg: 1.0, tau1: TAU1, tau2: TAU2, reference_timing: timing, reference_strength: strength },
    },
    { key: `sample${suffix}`, type: 'SamplerCustomAdvanced', pos: [x + 820, y], size: [300, 0] },
    { key: `decode${suffix}`, type: 'VAEDecode', pos: [x + 1160, y] },
  ];
}

function flux2StagedLinks(suffix, text) {
  const s = (key) => `${key}${suffix}`;
  return [
    [text, 0, s('refs'), 'conditioning'],
    ['vae', 0, s('refs'), 'vae'],
    ['image', 0, s('refs'), 'image1'],
    ['image2', 0, s('refs'), 'image2'],
    ['unet', 0, s('guider'), 'model'],
    [text, 0, s('guider'), 'positive_stage1'],
    [s('refs'), 0, s('guider'), 'positive_stage2'],
    ['noise', 0, s('sample'), 'noise'],
    [s('guider'), 0, s('sample'), 'guider'],
    ['ksampler', 0, s('sample'), 'sampler'],
    [s('scheduler'), 0, s('sample'), 'sigmas'],
    ['latent', 0, s('sample'), 'latent_image'],
    [s('sample'), 0, s('decode'), 'samples'],
    ['vae', 0, s('decode'), 'vae'],
  ];
}

function flux2Staged(unet, te, guidance, steps, timing, strength, prefix, noteText) {
  const text = guidance ? 'guidance' : 'text';
  return {
    nodes: [
      note(noteText),
      ...flux2Loaders(unet, te),
      ...flux2TextNodes(guidance),
      ...flux2StagedNodes(900, 0, '', steps, timing, strength),
      save('save', [2100, 110], prefix),
    ],
    links: [...flux2LoaderLinks(guidance), ...flux2StagedLinks('', text), ['decode', 0, 'save', 'images']],
  };
}

// Native FLUX.2 references as ComfyUI's template: ImageScaleToTotalPixels (1 MP) -> VAEEncode -> ReferenceLatent.
function nativeReference(key, image, conditioning, x, y) {
  return {
    nodes: [
      { key: `${key}_scale`, type: 'ImageScaleToTotalPixels', pos: [x, y], size: [300, 0], widgets: { upscale_method: 'area', megapixels: 1.0, resolution_steps: 1 } },
      { key: `${key}_encode`, type: 'VAEEncode', pos: [x, y + 150] },
      { key: `${key}_ref`, type: 'ReferenceLatent', pos: [x + 340, y], title: `Native: ReferenceLatent (${image})` },
    ],
    links: [
      [image, 0, `${key}_scale`, 'image'],
      [`${key}_scale`, 0, `${key}_encode`, 'pixels'],
      ['vae', 0, `${key}_encode`, 'vae'],
      [conditioning, 0, `${key}_ref`, 'conditioning'],
      [`${key}_encode`, 0, `${key}_ref`, 'latent'],
    ],
  };
}

function flux2Compare() {
  const ref1 = nativeReference('native1', 'image', 'guidance', 900, -700);
  const ref2 = nativeReference('native2', 'image2', 'native1_ref', 900, -450);
  return {
    nodes: [
      note(FLUX2_DEV_NOTE + '\n\nTop: native FLUX.2 (ReferenceLatent x2 + BasicGuider, every step with the references).\n'
        + 'Bottom: staged. Same seed, noise, sampler, sigmas and latent: only the staging differs.', [900, 460]),
      ...flux2Loaders(FILES.flux2Dev, FILES.mistral),
      ...flux2TextNodes(true),
      ...ref1.nodes,
      ...ref2.nodes,
      { key: 'native_scheduler', type: 'Flux2Scheduler', pos: [1620, -700], size: [380, 0], widgets: { steps: 20, width: 1024, height: 1024 } },
      { key: 'native_guider', type: 'BasicGuider', pos: [1620, -540], title: 'Native: BasicGuider' },
      { key: 'native_sample', type: 'SamplerCustomAdvanced', pos: [2040, -700], size: [300, 0] },
      { key: 'native_decode', type: 'VAEDecode', pos: [2380, -700] },
      save('native_save', [2380, -590], 'flux2_native', 'Native'),
      ...flux2StagedNodes(900, 0, '_staged', 20, '', ''),
      save('staged_save', [2100, 110], 'flux2_staged', `Staged (tau1 ${TAU1}, tau2 ${TAU2})`),
    ],
    links: [
      ...flux2LoaderLinks(true),
      ...ref1.links,
      ...ref2.links,
      ['unet', 0, 'native_guider', 'model'],
      ['native2_ref', 0, 'native_guider', 'conditioning'],
      ['noise', 0, 'native_sample', 'noise'],
      ['native_guider', 0, 'native_sample', 'guider'],
      ['ksampler', 0, 'native_sample', 'sampler'],
      ['native_scheduler', 0, 'native_sample', 'sigmas'],
      ['latent', 0, 'native_sample', 'latent_image'],
      ['native_sample', 0, 'native_decode', 'samples'],
      ['vae', 0, 'native_decode', 'vae'],
      ['native_decode', 0, 'native_save', 'images'],
      ...flux2StagedLinks('_staged', 'guidance'),
      ['decode_staged', 0, 'staged_save', 'images'],
    ],
  };
}

// ---------------------------------------------------------------------------------- Qwen-Image-Edit-2511
function qwen2511Staged() {
  const method = 'qwen_image_edit_2511 (index_timestep_zero)';
  return {
    nodes: [
      note(QWEN_NOTE, [900, 460]),
      { key: 'unet', type: 'UNETLoader', pos: [0, 0], size: [380, 0], widgets: { unet_name: FILES.qwen2511, weight_dtype: 'default' } },
      { key: 'shift', type: 'ModelSamplingAuraFlow', pos: [0, 130], size: [380, 0], widgets: { shift: 3.1 } },
      { key: 'clip', type: 'CLIPLoader', pos: [0, 240], size: [380, 0], widgets: { clip_name: FILES.qwenTe, type: 'qwen_image', device: 'default' } },
      { key: 'vae', type: 'VAELoader', pos: [0, 390], size: [380, 0], widgets: { vae_name: FILES.qwenVae } },
      { key: 'image', type: 'LoadImage', pos: [0, 500], size: [380, 380], title: 'Picture 1: the subject', widgets: { image: FILES.reference } },
      { key: 'image2', type: 'LoadImage', pos: [0, 920], size: [380, 380], title: 'Picture 2: a second reference', widgets: { image: FILES.reference2 } },
      { key: 'latent', type: 'EmptySD3LatentImage', pos: [0, 1340], size: [380, 0], widgets: { width: 1024, height: 1024, batch_size: 1 } },
      { key: 'encode', type: 'DLAQwenCLIPJointEncode', pos: [440, 0], size: [420, 260], title: 'Qwen2.5-VL Joint Encode (positive)', widgets: { prompt: QWEN_PROMPT, mllm_resolution: 384 } },
      { key: 'encode_neg', type: 'DLAQwenCLIPJointEncode', pos: [440, 300], size: [420, 200], title: 'Qwen2.5-VL Joint Encode (negative)', widgets: { prompt: '', mllm_resolution: 384 } },
      { key: 'refs', type: 'DLAReferenceLatents', pos: [900, 0], size: [380, 0], title: 'Reference Latents (positive)', widgets: { vae_resolution: 1024, reference_latents_method: method } },
      { key: 'refs_neg', type: 'DLAReferenceLatents', pos: [900, 300], size: [380, 0], title: 'Reference Latents (negative)', widgets: { vae_resolution: 1024, reference_latents_method: method } },
      {
        key: 'sampler', type: 'DLAStagedKSamplerAdvanced', pos: [1320, 0], size: [340, 0], title: 'Staged KSampler (Advanced, DLA)',
        widgets: { seed: SEED, control_after_generate: 'fixed', steps: 40, cfg: 4.0, sampler_name: 'euler', scheduler: 'simple', denoise: 1.0, tau1: TAU1, tau2: TAU2, reference_timing: '', reference_strength: '' },
      },
      { key: 'decode', type: 'VAEDecode', pos: [1700, 0] },
      save('save', [1700, 110], 'qwen_edit_2511_staged'),
    ],
    links: [
      ['unet', 0, 'shift', 'model'],
      ['clip', 0, 'encode', 'clip'],
      ['image', 0, 'encode', 'image1'],
      ['image2', 0, 'encode', 'image2'],
      ['clip', 0, 'encode_neg', 'clip'],
      ['image', 0, 'encode_neg', 'image1'],
      ['image2', 0, 'encode_neg', 'image2'],
      ['encode', 0, 'refs', 'conditioning'],
      ['vae', 0, 'refs', 'vae'],
      ['image', 0, 'refs', 'image1'],
      ['image2', 0, 'refs', 'image2'],
      ['encode_neg', 0, 'refs_neg', 'conditioning'],
      ['vae', 0, 'refs_neg', 'vae'],
      ['image', 0, 'refs_neg', 'image1'],
      ['image2', 0, 'refs_neg', 'image2'],
      ['shift', 0, 'sampler', 'model'],
      ['encode', 0, 'sampler', 'positive_stage1'],
      ['refs', 0, 'sampler', 'positive_stage2'],
      ['encode_neg', 0, 'sampler', 'negative_stage1'],
      ['refs_neg', 0, 'sampler', 'negative_stage2'],
      ['latent', 0, 'sampler', 'latent_image'],
      ['sampler', 0, 'decode', 'samples'],
      ['vae', 0, 'decode', 'vae'],
      ['decode', 0, 'save', 'images'],
    ],
  };
}

const withRequires = (graph, requires) => ({ ...graph, extra: { dla_requires: requires } });

const WORKFLOWS = {
  flux2_dev_staged: withRequires(
    flux2Staged(FILES.flux2Dev, FILES.mistral, true, 20, TIMING_EXAMPLE, STRENGTH_EXAMPLE, 'flux2_dev_staged', FLUX2_DEV_STAGED_NOTE),
    REQUIRES.flux2Dev),
  flux2_klein_staged: withRequires(
    flux2Staged(FILES.klein, FILES.qwen3, false, 4, '', '', 'flux2_klein_staged', FLUX2_KLEIN_NOTE), REQUIRES.flux2Klein),
  flux2_dev_compare: withRequires(flux2Compare(), REQUIRES.flux2Dev),
  qwen_image_edit_2511_staged: withRequires(qwen2511Staged(), REQUIRES.qwen2511),
};

runBuilder('build_flux2_qwen2511_workflows.js', WORKFLOWS);
