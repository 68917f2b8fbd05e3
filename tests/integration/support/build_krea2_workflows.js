// Builds the Krea 2 example workflows in ComfyUI's real front end and saves them as the front end does
// (same method as tests/integration/browser/build_workflows.js).
//
// usage (from the repository root, with a server running the pack on a ComfyUI with Krea 2, e.g.
//        `PYTHONPATH=tests/lib python -m dla_harness.server` on ComfyUI 0.33):
//   node tests/integration/support/build_krea2_workflows.js http://127.0.0.1:PORT
// writes workflows/<name>.json (UI format) and workflows/api/<name>.json (API format) for the two graphs below.
// Each UI file carries extra.dla_requires (see dla_harness.workflow_prompts.unmet_requirements).

const { runBuilder } = require('../browser/build_workflows.js');

// The files of ComfyUI's own Krea 2 template (comfyui-workflow-templates: image_krea2_turbo_t2i_int8).
const FILES = {
  krea2: 'krea2_turbo_int8_convrot.safetensors',
  te: 'qwen3vl_4b_fp8_scaled.safetensors',
  vae: 'qwen_image_vae.safetensors',
  reference: 'dla_subject_reference.png',
};
const SEED = 42;
const STEPS = 8; // the Turbo template's
const TAU1 = 0.95;
const TAU2 = 0.0;
const METHOD = 'krea2 (index)';
const PROMPT = 'The subject from the reference image sitting on a wooden bench in an autumn park, seen from the side, soft morning light.';

const REQUIRES = {
  feature: 'Krea 2 (comfy/ldm/krea2, CLIPLoader type krea2)',
  min_comfyui: null,
  node_types: [],
  clip_types: ['krea2'],
  reference_latents_methods: [],
  notice: 'nodes/compat.py::krea2_missing_message',
};

const FILES_NOTE = [
  `models/diffusion_models/${FILES.krea2}`,
  `models/text_encoders/${FILES.te}   (Load CLIP, type krea2; holds the vision tower the joint encode needs)`,
  `models/vae/${FILES.vae}`,
];
const RECIPE = [
  `Starting recipe (not tuned on the full model): stage 1 (t >= tau1 = ${TAU1}) without the reference latents, then`,
  `the conditioning + reference latents (Reference Latents (DLA), method ${METHOD}: Krea 2 has no method of its own`,
  `and drops references without one). tau2 = ${TAU2}: no stage 3. ${STEPS} steps, cfg 1, euler / simple as ComfyUI's`,
  'Krea 2 Turbo template. See docs/krea2.md.',
];

const STAGED_NOTE = [
  'Krea 2: the paper\'s pipeline, training-free. Needs a ComfyUI with Krea 2 (tested: 0.33.0).',
  '',
  ...FILES_NOTE,
  '',
  'Krea 2 Joint Encode reads the reference WITH the instruction in Qwen3-VL (the paper\'s joint encoding; Krea 2',
  'itself reads text only and was trained so: image tokens are new to it). Krea 2 Layer Map shows which of the',
  '12 Qwen3-VL layers Krea 2\'s own text fusion draws on for this encoding (text and image tokens).',
  ...RECIPE,
].join('\n');

const COMPARE_NOTE = [
  'Krea 2: native references (every step) vs staged (stage 1 without them). Needs a ComfyUI with Krea 2 (tested: 0.33.0).',
  '',
  ...FILES_NOTE,
  '',
  'Both use the same CLIP Text Encode and the same reference chain (ComfyUI\'s ReferenceLatent with method index, as',
  'Krea 2 needs one), seed, steps and sampler: only the staging differs.',
  ...RECIPE,
].join('\n');

const note = (text, size = [900, 400]) => ({ key: 'note', type: 'Note', pos: [0, -(size[1] + 40)], size, widgets: { 0: text }, title: 'Read me' });
const save = (key, pos, prefix, title) => ({ key, type: 'SaveImage', pos, size: [520, 580], title, widgets: { filename_prefix: prefix } });

function loaders() {
  return [
    { key: 'unet', type: 'UNETLoader', pos: [0, 0], size: [380, 0], widgets: { unet_name: FILES.krea2, weight_dtype: 'default' } },
    { key: 'clip', type: 'CLIPLoader', pos: [0, 130], size: [380, 0], widgets: { clip_name: FILES.te, type: 'krea2', device: 'default' } },
    { key: 'vae', type: 'VAELoader', pos: [0, 280], size: [380, 0], widgets: { vae_name: FILES.vae } },
    { key: 'image', type: 'LoadImage', pos: [0, 390], size: [380, 380], title: 'The subject', widgets: { image: FILES.reference } },
    { key: 'latent', type: 'EmptySD3LatentImage', pos: [0, 810], size: [380, 0], widgets: { width: 1024, height: 1024, batch_size: 1 } },
  ];
}

const stagedSampler = (key, pos, title) => ({
  key, type: 'DLAStagedKSamplerAdvanced', pos, size: [340, 0], title,
  widgets: { seed: SEED, control_after_generate: 'fixed', steps: STEPS, cfg: 1.0, sampler_name: 'euler', scheduler: 'simple', denoise: 1.0, tau1: TAU1, tau2: TAU2, reference_timing: '' },
});

function krea2Staged() {
  return {
    nodes: [
      note(STAGED_NOTE, [900, 420]),
      ...loaders(),
      { key: 'encode', type: 'DLAKrea2JointEncode', pos: [440, 0], size: [420, 260], title: 'Krea 2 Joint Encode (DLA)', widgets: { prompt: PROMPT, mllm_resolution: 384 } },
      { key: 'refs', type: 'DLAReferenceLatents', pos: [440, 320], size: [380, 0], title: 'Reference Latents (DLA)', widgets: { vae_resolution: 1024, reference_latents_method: METHOD } },
      { key: 'layermap', type: 'DLAKrea2LayerMap', pos: [440, 620], size: [380, 0], widgets: { width: 768, height: 512 } },
      { key: 'preview', type: 'PreviewImage', pos: [440, 800], size: [520, 400], title: 'Which Qwen3-VL layers Krea 2 uses' },
      stagedSampler('sampler', [900, 0], 'Staged KSampler (Advanced, DLA)'),
      { key: 'decode', type: 'VAEDecode', pos: [1280, 0] },
      save('save', [1280, 110], 'krea2_staged'),
    ],
    links: [
      ['clip', 0, 'encode', 'clip'],
      ['image', 0, 'encode', 'image1'],
      ['encode', 0, 'refs', 'conditioning'],
      ['vae', 0, 'refs', 'vae'],
      ['image', 0, 'refs', 'image1'],
      ['unet', 0, 'layermap', 'model'],
      ['encode', 1, 'layermap', 'mllm_features'],
      ['layermap', 0, 'preview', 'images'],
      ['unet', 0, 'sampler', 'model'],
      ['encode', 0, 'sampler', 'positive_stage1'],
      ['refs', 0, 'sampler', 'positive_stage2'],
      ['latent', 0, 'sampler', 'latent_image'],
      ['sampler', 0, 'decode', 'samples'],
      ['vae', 0, 'decode', 'vae'],
      ['decode', 0, 'save', 'images'],
    ],
  };
}

function krea2Compare() {
  return {
    nodes: [
      note(COMPARE_NOTE, [900, 400]),
      ...loaders(),
      { key: 'text', type: 'CLIPTextEncode', pos: [440, 0], size: [420, 200], title: 'CLIP Text Encode (prompt)', widgets: { text: PROMPT } },
      { key: 'negative', type: 'ConditioningZeroOut', pos: [440, 240], title: 'Negative (zeroed, as the template)' },
      { key: 'scale', type: 'ImageScaleToTotalPixels', pos: [440, 340], size: [300, 0], widgets: { upscale_method: 'area', megapixels: 1.0, resolution_steps: 1 } },
      { key: 'vaeencode', type: 'VAEEncode', pos: [440, 490] },
      { key: 'reflatent', type: 'ReferenceLatent', pos: [780, 340], title: 'ReferenceLatent' },
      { key: 'method', type: 'FluxKontextMultiReferenceLatentMethod', pos: [780, 440], size: [360, 0], title: 'Reference method: index', widgets: { reference_latents_method: 'index' } },
      {
        key: 'native', type: 'KSampler', pos: [1180, -420], size: [340, 0], title: 'Native: KSampler (references every step)',
        widgets: { seed: SEED, control_after_generate: 'fixed', steps: STEPS, cfg: 1.0, sampler_name: 'euler', scheduler: 'simple', denoise: 1.0 },
      },
      { key: 'native_decode', type: 'VAEDecode', pos: [1560, -420] },
      save('native_save', [1560, -310], 'krea2_native', 'Native'),
      stagedSampler('staged', [1180, 110], `Staged (tau1 ${TAU1}, tau2 ${TAU2})`),
      { key: 'staged_decode', type: 'VAEDecode', pos: [1560, 110] },
      save('staged_save', [1560, 220], 'krea2_staged_compare', `Staged (tau1 ${TAU1}, tau2 ${TAU2})`),
    ],
    links: [
      ['clip', 0, 'text', 'clip'],
      ['text', 0, 'negative', 'conditioning'],
      ['image', 0, 'scale', 'image'],
      ['scale', 0, 'vaeencode', 'pixels'],
      ['vae', 0, 'vaeencode', 'vae'],
      ['text', 0, 'reflatent', 'conditioning'],
      ['vaeencode', 0, 'reflatent', 'latent'],
      ['reflatent', 0, 'method', 'conditioning'],
      ['unet', 0, 'native', 'model'],
      ['method', 0, 'native', 'positive'],
      ['negative', 0, 'native', 'negative'],
      ['latent', 0, 'native', 'latent_image'],
      ['native', 0, 'native_decode', 'samples'],
      ['vae', 0, 'native_decode', 'vae'],
      ['native_decode', 0, 'native_save', 'images'],
      ['unet', 0, 'staged', 'model'],
      ['text', 0, 'staged', 'positive_stage1'],
      ['method', 0, 'staged', 'positive_stage2'],
      ['latent', 0, 'staged', 'latent_image'],
      ['staged', 0, 'staged_decode', 'samples'],
      ['vae', 0, 'staged_decode', 'vae'],
      ['staged_decode', 0, 'staged_save', 'images'],
    ],
  };
}

const withRequires = (graph) => ({ ...graph, extra: { dla_requires: REQUIRES } });

const WORKFLOWS = {
  krea2_staged: withRequires(krea2Staged()),
  krea2_compare: withRequires(krea2Compare()),
};

runBuilder('build_krea2_workflows.js', WORKFLOWS);
