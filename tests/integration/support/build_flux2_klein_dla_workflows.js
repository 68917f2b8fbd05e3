// Builds the paper's pipeline on FLUX.2 [klein] 4B (a DLA + LoRA trained with Qwen3-VL-4B, issue 19) in ComfyUI's
// real front end and saves it as the front end does (same method as tests/integration/browser/build_workflows.js).
//
// usage (from the repository root, with a server running the pack on a ComfyUI with FLUX.2 [klein], e.g.
//        `PYTHONPATH=tests/lib python -m dla_harness.server` on ComfyUI 0.33):
//   node tests/integration/support/build_flux2_klein_dla_workflows.js http://127.0.0.1:PORT
// writes workflows/flux2_klein_dla_subject.json (UI format) and workflows/api/flux2_klein_dla_subject.json (API).
// The UI file carries extra.dla_requires (see dla_harness.workflow_prompts.unmet_requirements).

const { runBuilder } = require('../browser/build_workflows.js');

// [klein] and its VAE: the files of ComfyUI's own klein 4B template (as flux2_klein_staged); the MLLM folder and
// the DLA + LoRA pair are this pack's own (what `python -m dla_core.train export` writes for configs/train_flux2_klein.yaml).
const FILES = {
  klein: 'flux-2-klein-4b-fp8.safetensors',
  vae: 'flux2-vae.safetensors',
  mllm: 'Qwen3-VL-4B-Instruct',
  dla: 'dla_qwen3-vl-4b_flux2-klein-4b.safetensors',
  lora: 'dla_qwen3-vl-4b_flux2-klein-4b_lora.safetensors',
  reference: 'dla_subject_reference.png',
};
const SEED = 42;
const STEPS = 4; // ComfyUI's klein 4B distilled template
const TAU1 = 0.95; // the paper's
const TAU2 = 0.85;
const PROMPT = 'The subject from the reference image sitting on a wooden bench in an autumn park, '
  + 'seen from the side, soft morning light, detailed photo.';

const REQUIRES = {
  feature: 'FLUX.2 [klein] (DLA + LoRA trained on [klein] 4B, Qwen3-VL-4B through MLLM Loader)',
  min_comfyui: '0.9.2',
  node_types: ['EmptyFlux2LatentImage', 'Flux2Scheduler'],
  clip_types: [],
  reference_latents_methods: [],
  notice: 'nodes/compat.py::flux2_missing_message',
};

const NOTE = [
  'The paper\'s pipeline on FLUX.2 [klein] 4B: a DLA + LoRA trained with Qwen3-VL-4B (docs/training.md, FLUX.2 [klein] 4B).',
  'Needs ComfyUI >= 0.9.2.',
  '',
  `models/diffusion_models/${FILES.klein}   (or flux-2-klein-4b.safetensors)`,
  `models/vae/${FILES.vae}`,
  `models/loras/${FILES.lora}   (trained with the DLA)`,
  `models/dla/${FILES.dla}`,
  `models/mllm/${FILES.mllm}/   (HF folder: config.json, *.safetensors, tokenizer, processor)`,
  '',
  'No CLIP loader: the DLA turns every Qwen3-VL layer into [klein]\'s text conditioning (Dual Layer Aggregation\'s',
  'guidance has no effect on [klein], which has no guidance input). MLLM Joint Encode reads the reference with the',
  'prompt (image_size 0: Qwen3-VL\'s own resizing, as in training). Reference Latents (DLA) adds the VAE latents',
  '(the model\'s own method, index). Stage 1 (t >= tau1) MLLM only; stage 2 MLLM + reference latents; stage 3',
  '(t < tau2) the reference latents with the DLA\'s learned "MLLM off" (Stage Conditioning, stage 3).',
  `Sampling as ComfyUI's klein 4B distilled template: ${STEPS} steps (Flux2Scheduler), euler, cfg 1. At 1024x1024 the`,
  `model is called at t = 1, 0.97, 0.91, 0.77: stages 1, 1, 2, 3 with tau ${TAU1} / ${TAU2} (the paper's; not tuned on`,
  '[klein]). For klein base (flux-2-klein-base-4b, what the recipe trains on): more steps, e.g. 20.',
].join('\n');

const flux2KleinDlaSubject = {
  nodes: [
    { key: 'note', type: 'Note', pos: [0, -420], size: [900, 380], widgets: { 0: NOTE }, title: 'Read me' },
    { key: 'unet', type: 'UNETLoader', pos: [0, 0], size: [380, 0], widgets: { unet_name: FILES.klein, weight_dtype: 'default' } },
    { key: 'lora', type: 'LoraLoaderModelOnly', pos: [0, 130], size: [380, 0], widgets: { lora_name: FILES.lora, strength_model: 1.0 } },
    { key: 'vae', type: 'VAELoader', pos: [0, 280], size: [380, 0], widgets: { vae_name: FILES.vae } },
    { key: 'image', type: 'LoadImage', pos: [0, 390], size: [380, 380], title: 'The subject', widgets: { image: FILES.reference } },
    { key: 'mllm', type: 'DLAMLLMLoader', pos: [440, 0], size: [380, 0], widgets: { mllm_name: FILES.mllm, dtype: 'auto', device: 'default' } },
    { key: 'encode', type: 'DLAMLLMJointEncode', pos: [440, 160], size: [380, 270], widgets: { prompt: PROMPT, image_size: 0 } },
    { key: 'dla', type: 'DLALoader', pos: [440, 480], size: [380, 0], widgets: { dla_name: FILES.dla } },
    { key: 'latent', type: 'EmptyFlux2LatentImage', pos: [440, 600], size: [380, 0], widgets: { width: 1024, height: 1024, batch_size: 1 } },
    { key: 'noise', type: 'RandomNoise', pos: [440, 760], size: [380, 0], widgets: { noise_seed: SEED, control_after_generate: 'fixed' } },
    { key: 'ksampler', type: 'KSamplerSelect', pos: [440, 880], size: [380, 0], widgets: { sampler_name: 'euler' } },
    { key: 'aggregate', type: 'DLAAggregate', pos: [880, 0], size: [340, 0] },
    { key: 'refs', type: 'DLAReferenceLatents', pos: [880, 160], size: [340, 0], title: 'Reference Latents (DLA)', widgets: { vae_resolution: 1024, reference_latents_method: "model's own method (leave unset)" } },
    { key: 'stage3', type: 'DLAStageConditioning', pos: [880, 480], size: [340, 0], title: 'Stage 3: MLLM off + references', widgets: { stage: '3: identity only' } },
    { key: 'scheduler', type: 'Flux2Scheduler', pos: [880, 640], size: [340, 0], widgets: { steps: STEPS, width: 1024, height: 1024 } },
    {
      key: 'guider', type: 'DLAStagedGuiderAdvanced', pos: [1280, 0], size: [360, 0], title: 'Staged Guider (Advanced, DLA)',
      widgets: { cfg: 1.0, tau1: TAU1, tau2: TAU2, reference_timing: '', reference_strength: '' },
    },
    { key: 'sample', type: 'SamplerCustomAdvanced', pos: [1280, 420], size: [300, 0] },
    { key: 'decode', type: 'VAEDecode', pos: [1700, 0] },
    { key: 'save', type: 'SaveImage', pos: [1700, 110], size: [520, 580], widgets: { filename_prefix: 'flux2_klein_dla_subject' } },
  ],
  links: [
    ['unet', 0, 'lora', 'model'],
    ['mllm', 0, 'encode', 'mllm'],
    ['image', 0, 'encode', 'image'],
    ['dla', 0, 'aggregate', 'dla'],
    ['encode', 0, 'aggregate', 'mllm_features'],
    ['lora', 0, 'aggregate', 'model'], // a DLA made for another DiT is refused here, with the fix
    ['aggregate', 0, 'refs', 'conditioning'],
    ['vae', 0, 'refs', 'vae'],
    ['image', 0, 'refs', 'image1'],
    ['refs', 0, 'stage3', 'positive'],
    ['lora', 0, 'guider', 'model'],
    ['aggregate', 0, 'guider', 'positive_stage1'],
    ['refs', 0, 'guider', 'positive_stage2'],
    ['stage3', 0, 'guider', 'positive_stage3'],
    ['noise', 0, 'sample', 'noise'],
    ['guider', 0, 'sample', 'guider'],
    ['ksampler', 0, 'sample', 'sampler'],
    ['scheduler', 0, 'sample', 'sigmas'],
    ['latent', 0, 'sample', 'latent_image'],
    ['sample', 0, 'decode', 'samples'],
    ['vae', 0, 'decode', 'vae'],
    ['decode', 0, 'save', 'images'],
  ],
  extra: { dla_requires: REQUIRES },
};

runBuilder('build_flux2_klein_dla_workflows.js', { flux2_klein_dla_subject: flux2KleinDlaSubject });
