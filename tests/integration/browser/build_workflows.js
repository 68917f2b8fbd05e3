// Builds the example workflows in ComfyUI's real front end and saves them as the front end does.
//
// usage (from the repository root, with a server running the pack, e.g.
//        `PYTHONPATH=tests/lib python -m dla_harness.server` in another shell):
//   node tests/integration/browser/build_workflows.js http://127.0.0.1:PORT
// writes workflows/<name>.json (UI format: app.graph.serialize(), what "Save" writes) and
//        workflows/api/<name>.json (API format: app.graphToPrompt().output, what "Export (API)" writes).
//
// The graphs are described below by node, widget values and links; the front end creates the
// nodes from the server's /object_info, so the files carry exactly the slots, widget order and
// defaults a person would get by building the graph by hand.

const path = require('path');
const fs = require('fs');
const { launchChromium, openFrontend, runMain } = require('./frontend.js');

const REPO = path.resolve(__dirname, '..', '..', '..');

// File names as people have them: FLUX.1-dev and its VAE from Black Forest Labs' repository,
// InternVL3-8B in transformers format (OpenGVLab/InternVL3-8B-hf), and the DLA + LoRA pair
// that training writes (the two files belong together: same MLLM, same FLUX).
const FILES = {
  flux: 'flux1-dev.safetensors',
  vae: 'ae.safetensors',
  mllm: 'InternVL3-8B-hf',
  dla: 'dla_internvl3-8b_flux1-dev.safetensors',
  lora: 'dla_internvl3-8b_flux1-dev_lora.safetensors',
  reference: 'dla_subject_reference.png',
};
// Where each publicly downloadable model file the workflows name comes from: {name: {directory, url}}.
// The URLs are those of ComfyUI's own templates (comfyui-workflow-templates: flux_dev_full_text_to_image,
// flux_kontext_dev_basic, image_qwen_image_edit_2509, image_qwen_image_edit_2511, image_flux2_fp8,
// image_flux2_klein_image_edit_4b_distilled). buildInPage copies the entry of every loader widget value
// found here into node.properties.models, the metadata ComfyUI's front end reads when a workflow is
// opened: files missing from the server are listed with their folder and a download link (1.27: the
// "missing models" dialog; 1.49: the missing-models list of the errors panel). The DLA checkpoints, the
// DLA's LoRA and the MLLM folder are this pack's own (no single public file): they get no entry.
const MODEL_LINKS = {
  // FLUX.1 [dev] (dla_flux_*) and FLUX.1 Kontext [dev] (flux_kontext_*)
  'flux1-dev.safetensors': { directory: 'diffusion_models', url: 'https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors' },
  'ae.safetensors': { directory: 'vae', url: 'https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors' },
  'flux1-dev-kontext_fp8_scaled.safetensors': { directory: 'diffusion_models', url: 'https://huggingface.co/Comfy-Org/flux1-kontext-dev_ComfyUI/resolve/main/split_files/diffusion_models/flux1-dev-kontext_fp8_scaled.safetensors' },
  'clip_l.safetensors': { directory: 'text_encoders', url: 'https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors' },
  't5xxl_fp8_e4m3fn_scaled.safetensors': { directory: 'text_encoders', url: 'https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp8_e4m3fn_scaled.safetensors' },
  // Qwen-Image-Edit-2509 / -2511
  'qwen_image_edit_2509_fp8_e4m3fn.safetensors': { directory: 'diffusion_models', url: 'https://huggingface.co/Comfy-Org/Qwen-Image-Edit_ComfyUI/resolve/main/split_files/diffusion_models/qwen_image_edit_2509_fp8_e4m3fn.safetensors' },
  'qwen_image_edit_2511_fp8mixed.safetensors': { directory: 'diffusion_models', url: 'https://huggingface.co/Comfy-Org/Qwen-Image-Edit_ComfyUI/resolve/main/split_files/diffusion_models/qwen_image_edit_2511_fp8mixed.safetensors' },
  'qwen_2.5_vl_7b_fp8_scaled.safetensors': { directory: 'text_encoders', url: 'https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors' },
  'qwen_image_vae.safetensors': { directory: 'vae', url: 'https://huggingface.co/Comfy-Org/Qwen-Image_ComfyUI/resolve/main/split_files/vae/qwen_image_vae.safetensors' },
  // FLUX.2 [dev] / [klein]
  'flux2_dev_fp8mixed.safetensors': { directory: 'diffusion_models', url: 'https://huggingface.co/Comfy-Org/flux2-dev/resolve/main/split_files/diffusion_models/flux2_dev_fp8mixed.safetensors' },
  'mistral_3_small_flux2_fp8.safetensors': { directory: 'text_encoders', url: 'https://huggingface.co/Comfy-Org/flux2-dev/resolve/main/split_files/text_encoders/mistral_3_small_flux2_fp8.safetensors' },
  'flux2-vae.safetensors': { directory: 'vae', url: 'https://huggingface.co/Comfy-Org/flux2-dev/resolve/main/split_files/vae/flux2-vae.safetensors' },
  'flux-2-klein-4b-fp8.safetensors': { directory: 'diffusion_models', url: 'https://huggingface.co/black-forest-labs/FLUX.2-klein-4b-fp8/resolve/main/flux-2-klein-4b-fp8.safetensors' },
  'qwen_3_4b.safetensors': { directory: 'text_encoders', url: 'https://huggingface.co/Comfy-Org/z_image_turbo/resolve/main/split_files/text_encoders/qwen_3_4b.safetensors' },
  // Krea 2 (ComfyUI's template image_krea2_turbo_t2i_int8; its VAE is qwen_image_vae, linked above)
  'krea2_turbo_int8_convrot.safetensors': { directory: 'diffusion_models', url: 'https://huggingface.co/Comfy-Org/Krea-2/resolve/main/diffusion_models/krea2_turbo_int8_convrot.safetensors' },
  'qwen3vl_4b_fp8_scaled.safetensors': { directory: 'text_encoders', url: 'https://huggingface.co/Comfy-Org/Krea-2/resolve/main/text_encoders/qwen3vl_4b_fp8_scaled.safetensors' },
};
const PROMPT = 'The subject from the reference image sitting on a wooden bench in an autumn park, '
  + 'seen from the side, soft morning light, detailed photo.';
const SEED = 42;
const STEPS = 28; // the paper's schedule: ~4 / 7 / 17 steps in stages 1 / 2 / 3 at 1024x1024
const NOTE = [
  'DLA subject-driven generation (FLUX.1-dev + InternVL3-8B).',
  '',
  `models/diffusion_models/${FILES.flux}`,
  `models/vae/${FILES.vae}`,
  `models/loras/${FILES.lora}   (trained with the DLA)`,
  `models/dla/${FILES.dla}`,
  `models/mllm/${FILES.mllm}/   (HF folder: config.json, *.safetensors, tokenizer, processor)`,
  '',
  'No CLIP / T5 loader: the DLA turns the MLLM\'s hidden states into FLUX\'s text conditioning.',
  'Staged KSampler: t >= tau1 MLLM only; tau2 <= t < tau1 MLLM + reference latents;',
  't < tau2 reference latents only. tau1 = tau2 = 0 turns staging off.',
].join('\n');

// Shared front half of both graphs: models, reference image, MLLM joint encoding, DLA, identity.
function commonNodes() {
  return [
    { key: 'note', type: 'Note', pos: [0, -250], size: [760, 210], widgets: { 0: NOTE }, title: 'Read me' },
    { key: 'unet', type: 'UNETLoader', pos: [0, 0], size: [340, 0], widgets: { unet_name: FILES.flux, weight_dtype: 'default' } },
    { key: 'lora', type: 'LoraLoaderModelOnly', pos: [0, 130], size: [340, 0], widgets: { lora_name: FILES.lora, strength_model: 1.0 } },
    { key: 'vae', type: 'VAELoader', pos: [0, 280], size: [340, 0], widgets: { vae_name: FILES.vae } },
    { key: 'image', type: 'LoadImage', pos: [0, 390], size: [340, 380], widgets: { image: FILES.reference } },
    { key: 'mllm', type: 'DLAMLLMLoader', pos: [400, 0], size: [360, 0], widgets: { mllm_name: FILES.mllm, dtype: 'auto', device: 'default' } },
    { key: 'encode', type: 'DLAMLLMJointEncode', pos: [400, 160], size: [360, 270], widgets: { prompt: PROMPT } },
    { key: 'dla', type: 'DLALoader', pos: [400, 480], size: [360, 0], widgets: { dla_name: FILES.dla } },
    { key: 'aggregate', type: 'DLAAggregate', pos: [820, 0], size: [300, 0], widgets: { guidance: 2.5 } },
    { key: 'identity', type: 'DLAVAEIdentityEncode', pos: [820, 160], size: [300, 0], widgets: { placement: 'offset' } },
    { key: 'latent', type: 'EmptySD3LatentImage', pos: [820, 420], size: [300, 0], widgets: { width: 1024, height: 1024, batch_size: 1 } },
  ];
}

const COMMON_LINKS = [
  ['unet', 0, 'lora', 'model'],
  ['mllm', 0, 'encode', 'mllm'],
  ['image', 0, 'encode', 'image'],
  ['dla', 0, 'aggregate', 'dla'],
  ['encode', 0, 'aggregate', 'mllm_features'],
  ['vae', 0, 'identity', 'vae'],
  ['image', 0, 'identity', 'image'],
];

function sampler(key, pos, tau1, tau2, title) {
  return {
    key, type: 'DLAStagedKSampler', pos, title, size: [320, 0],
    widgets: { seed: SEED, control_after_generate: 'fixed', steps: STEPS, cfg: 1.0, sampler_name: 'euler', scheduler: 'simple', denoise: 1.0, tau1, tau2 },
  };
}

function samplerLinks(key) {
  return [
    ['lora', 0, key, 'model'],
    ['aggregate', 0, key, 'positive'],
    ['identity', 0, key, 'identity'],
    ['latent', 0, key, 'latent_image'],
  ];
}

const WORKFLOWS = {
  dla_flux_subject: {
    nodes: [
      ...commonNodes(),
      sampler('sampler', [1180, 0], 0.95, 0.85, 'Staged KSampler (DLA)'),
      { key: 'decode', type: 'VAEDecode', pos: [1600, 0] },
      { key: 'save', type: 'SaveImage', pos: [1600, 110], size: [520, 580], widgets: { filename_prefix: 'dla_subject' } },
    ],
    links: [
      ...COMMON_LINKS,
      ...samplerLinks('sampler'),
      ['sampler', 0, 'decode', 'samples'],
      ['vae', 0, 'decode', 'vae'],
      ['decode', 0, 'save', 'images'],
    ],
  },
  dla_flux_staging_compare: {
    nodes: [
      ...commonNodes(),
      sampler('sampler_off', [1180, 0], 0.0, 0.0, 'Staging off (tau 0 / 0)'),
      sampler('sampler_on', [1180, 420], 0.95, 0.85, 'Staging on (tau 0.95 / 0.85)'),
      { key: 'decode_off', type: 'VAEDecode', pos: [1600, 0] },
      { key: 'decode_on', type: 'VAEDecode', pos: [2160, 0] },
      { key: 'save_off', type: 'SaveImage', pos: [1600, 110], size: [520, 580], title: 'Staging off (tau 0 / 0)', widgets: { filename_prefix: 'dla_staging_off' } },
      { key: 'save_on', type: 'SaveImage', pos: [2160, 110], size: [520, 580], title: 'Staging on (tau 0.95 / 0.85)', widgets: { filename_prefix: 'dla_staging_on' } },
    ],
    links: [
      ...COMMON_LINKS,
      ...samplerLinks('sampler_off'),
      ...samplerLinks('sampler_on'),
      ['sampler_off', 0, 'decode_off', 'samples'],
      ['sampler_on', 0, 'decode_on', 'samples'],
      ['vae', 0, 'decode_off', 'vae'],
      ['vae', 0, 'decode_on', 'vae'],
      ['decode_off', 0, 'save_off', 'images'],
      ['decode_on', 0, 'save_on', 'images'],
    ],
  },
};

async function buildInPage(page, spec) {
  return await page.evaluate(async ({ spec, modelLinks }) => {
    const { app, LiteGraph } = window;
    app.graph.clear();
    const byKey = {};
    for (const n of spec.nodes) {
      const node = LiteGraph.createNode(n.type);
      if (!node) throw new Error(`node type ${n.type} is not registered on this server`);
      app.graph.add(node);
      node.pos = n.pos;
      if (n.title) node.title = n.title;
      for (const [name, value] of Object.entries(n.widgets ?? {})) {
        const widget = /^\d+$/.test(name) ? node.widgets?.[Number(name)] : node.widgets?.find((w) => w.name === name);
        if (!widget) throw new Error(`${n.type} has no widget ${name}: ${(node.widgets ?? []).map((w) => w.name)}`);
        widget.value = value;
      }
      // Download metadata for the public model files this node loads (ComfyUI's templates do the same).
      const models = (node.widgets ?? [])
        .filter((w) => typeof w.value === 'string' && Object.hasOwn(modelLinks, w.value))
        .map((w) => ({ name: w.value, url: modelLinks[w.value].url, directory: modelLinks[w.value].directory }));
      if (models.length) node.properties.models = models;
      const size = node.computeSize();
      node.setSize([Math.max(size[0], n.size?.[0] ?? 0), Math.max(size[1], n.size?.[1] ?? 0)]);
      byKey[n.key] = node;
    }
    for (const [fromKey, outSlot, toKey, inputName] of spec.links) {
      const from = byKey[fromKey];
      const to = byKey[toKey];
      if (!from || !to) throw new Error(`link ${fromKey} -> ${toKey}: unknown node key`);
      const inSlot = to.findInputSlot(inputName);
      if (inSlot < 0) throw new Error(`${to.type} has no input ${inputName}: ${to.inputs.map((i) => i.name)}`);
      if (!from.connect(outSlot, to, inSlot)) throw new Error(`cannot connect ${from.type}[${outSlot}] -> ${to.type}.${inputName}`);
    }
    // Machine-readable facts about the graph (e.g. extra.dla_requires: the ComfyUI features it needs).
    app.graph.extra = Object.assign(app.graph.extra ?? {}, spec.extra ?? {});
    app.graph.setDirtyCanvas(true, true);
    const ui = app.graph.serialize();
    const api = (await app.graphToPrompt()).output;
    return { ui, api };
  }, { spec, modelLinks: MODEL_LINKS });
}

// Opens the front end at `url`, builds every graph of `workflows` ({name: spec}) and writes
// workflows/<name>.json and workflows/api/<name>.json. Shared with the Qwen / Kontext builder.
async function buildWorkflows(url, workflows) {
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1920, height: 1080 } });
    page.on('pageerror', (error) => process.stderr.write(`page error: ${error.message}\n`));
    await openFrontend(page, url);
    fs.mkdirSync(path.join(REPO, 'workflows', 'api'), { recursive: true });
    for (const [name, spec] of Object.entries(workflows)) {
      const { ui, api } = await buildInPage(page, spec);
      delete ui.extra?.ds; // let the canvas fit the graph when it is opened
      fs.writeFileSync(path.join(REPO, 'workflows', `${name}.json`), JSON.stringify(ui, null, 2) + '\n');
      fs.writeFileSync(path.join(REPO, 'workflows', 'api', `${name}.json`), JSON.stringify(api, null, 2) + '\n');
      process.stdout.write(`wrote workflows/${name}.json and workflows/api/${name}.json\n`);
    }
  } finally {
    await browser.close();
  }
}

// Runs a builder script: `node <script> <server-url>` builds `workflows`.
function runBuilder(scriptName, workflows) {
  const url = process.argv[2];
  if (!url) {
    process.stderr.write(`usage: node ${scriptName} <server-url>\n`);
    process.exit(1);
  }
  runMain(() => buildWorkflows(url, workflows));
}

module.exports = { buildWorkflows, runBuilder, MODEL_LINKS };

if (require.main === module) {
  runBuilder('build_workflows.js', WORKFLOWS);
}
