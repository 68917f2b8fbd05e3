// Opens shipped workflows in ComfyUI's real front end on a server that has none of their model files and
// reports what the front end's missing-models list shows. Driven by test_missing_models.py.
//
// usage: node check_missing_models.js <server-url> <screenshot-dir> <workflow.json> ...
// prints one JSON object: {frontend_version, results: {<file>: {kind, text, rows, screenshot}}}
//   rows: one per listed file: {name, directory, copied_url, download_href, download_enabled}
//     copied_url     what the row's "Copy URL" button put on the clipboard (null: no such button, or disabled)
//     download_href  the link the row's "Download" button opened (null: no button, or not clicked)
//
// Both front ends read the loader nodes' properties.models ({name, url, directory}, kept only when the
// name is one of the node's widget values) and list the files the server's model folder lacks:
//   1.27.10  the "Missing Models" dialog (.comfy-missing-models): "<directory> / <name>", "Download (<size>)",
//            "Copy URL"; Download is disabled unless the URL is on huggingface.co / civitai.com and the name
//            ends in .safetensors / .sft.
//   1.49.6   the error overlay ("N errors found", "View details") opens the right-hand panel's Errors tab,
//            group "Missing Models": per file its name, folder, "Copy URL" and "Download" (files with a URL),
//            and also the files of custom loaders it cannot place (no URL: no buttons).
// Network access off the test server is cut (route abort): the front ends' file-size look-ups fail fast.

const path = require('path');
const fs = require('fs');
const { launchChromium, openFrontend, runMain } = require('./frontend.js');

const VIEWPORT = { width: 1920, height: 1080 };

// Records clipboard writes and link clicks instead of doing them (runs before the page's own scripts).
function recordCopiesAndDownloads() {
  window.__dlaClipboard = [];
  window.__dlaLinks = [];
  const clipboard = {
    writeText: async (text) => { window.__dlaClipboard.push(String(text)); },
    readText: async () => window.__dlaClipboard.at(-1) ?? '',
    write: async () => {},
    read: async () => [],
  };
  Object.defineProperty(Navigator.prototype, 'clipboard', { get: () => clipboard, configurable: true });
  const click = HTMLAnchorElement.prototype.click;
  HTMLAnchorElement.prototype.click = function () {
    if (this.target === '_blank' || this.download) {
      window.__dlaLinks.push(this.href);
      return;
    }
    click.call(this);
  };
}


// Clicks `button` and returns what it wrote to the clipboard / which link it opened (null: nothing).
async function clickAndRecord(page, button, what) {
  const key = what === 'copy' ? '__dlaClipboard' : '__dlaLinks';
  const before = await page.evaluate((k) => window[k].length, key);
  await button.click();
  await page.waitForTimeout(300);
  return await page.evaluate(([k, n]) => (window[k].length > n ? window[k].at(-1) : null), [key, before]);
}

// Front end 1.27: the "Missing Models" dialog.
async function readDialog(page, shoot) {
  const list = page.locator('.p-dialog .comfy-missing-models');
  await list.waitFor({ state: 'visible', timeout: 30000 });
  const text = await page.locator('.p-dialog', { has: page.locator('.comfy-missing-models') }).innerText();
  await shoot();
  const rows = [];
  const options = list.locator('li');
  for (let i = 0; i < await options.count(); i++) {
    const option = options.nth(i);
    const label = (await option.innerText()).split('\n')[0].trim();
    const [directory, name] = label.split(' / ');
    const copy = option.locator('button', { hasText: 'Copy URL' });
    const download = option.locator('button', { hasText: 'Download' });
    const row = { name, directory, copied_url: null, download_href: null, download_enabled: false };
    if (await copy.count() && await copy.first().isEnabled()) row.copied_url = await clickAndRecord(page, copy.first(), 'copy');
    if (await download.count()) {
      row.download_enabled = await download.first().isEnabled();
      if (row.download_enabled) row.download_href = await clickAndRecord(page, download.first(), 'link');
    }
    rows.push(row);
  }
  return { kind: 'dialog', text, rows };
}

// Front end 1.49: error overlay -> "View details" -> Errors tab, group "Missing Models".
async function readErrorsPanel(page, shoot) {
  await page.locator('[data-testid="error-overlay-see-errors"]').click({ timeout: 30000 });
  const group = page.locator('[data-testid="error-group-missing-model"]');
  await group.waitFor({ state: 'visible', timeout: 30000 });
  await page.waitForTimeout(1000);
  const text = await group.innerText();
  await shoot();
  // One row per file: the element holding the name (title = the file name) up to the row that also holds
  // the "Locate node on canvas" button.
  const names = await group.evaluate((root) => [...root.querySelectorAll('[title]')]
    .map((el) => el.getAttribute('title'))
    .filter((title) => /\.(safetensors|sft|ckpt|pt|pth|bin|gguf|onnx)$/i.test(title)));
  const rows = [];
  for (const name of names) {
    const row = group.locator(`[title="${name}"]`).first()
      .locator('xpath=ancestor::*[.//*[@data-testid="missing-model-locate"]][1]');
    const lines = (await row.innerText()).split('\n').map((line) => line.trim()).filter(Boolean);
    const directory = lines[lines.indexOf(name) + 1] ?? null;
    const copy = row.locator('button[title="Copy URL"]');
    const download = row.locator('[data-testid="missing-model-download"]');
    const entry = { name, directory, copied_url: null, download_href: null, download_enabled: false };
    if (await copy.count() && await copy.first().isEnabled()) entry.copied_url = await clickAndRecord(page, copy.first(), 'copy');
    if (await download.count()) {
      entry.download_enabled = await download.first().isEnabled();
      if (entry.download_enabled) entry.download_href = await clickAndRecord(page, download.first(), 'link');
    }
    rows.push(entry);
  }
  return { kind: 'errors-panel', text, rows };
}

async function main() {
  const [url, screenshotDir, ...workflows] = process.argv.slice(2);
  fs.mkdirSync(screenshotDir, { recursive: true });
  const browser = await launchChromium();
  const report = { frontend_version: null, results: {} };
  try {
    const origin = new URL(url).origin;
    for (const file of workflows) {
      // A fresh context per workflow: the front end restores the last open workflow from its storage.
      const context = await browser.newContext({ viewport: VIEWPORT });
      await context.route((target) => target.origin !== origin, (route) => route.abort());
      await context.addInitScript(recordCopiesAndDownloads);
      const page = await context.newPage();
      try {
        await openFrontend(page, url);
        report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
        const graphData = JSON.parse(fs.readFileSync(file, 'utf8'));
        await page.evaluate(async (data) => { await window.app.loadGraphData(data); }, graphData);
        await page.waitForFunction(
          () => document.querySelector('.p-dialog .comfy-missing-models, [data-testid="error-overlay-see-errors"]'),
          null, { timeout: 30000 }).catch(() => {});
        const screenshot = path.join(screenshotDir, `missing_models_${path.basename(file, '.json')}.png`);
        const shoot = async () => {  // before any button is clicked (no "Copied to clipboard" toasts)
          await page.mouse.move(0, VIEWPORT.height - 1);
          await page.waitForTimeout(300);
          await page.screenshot({ path: screenshot });
        };
        const dialog = await page.locator('.p-dialog .comfy-missing-models').count();
        const result = dialog ? await readDialog(page, shoot) : await readErrorsPanel(page, shoot);
        result.screenshot = screenshot;
        report.results[file] = result;
      } catch (error) {
        const screenshot = path.join(screenshotDir, `missing_models_${path.basename(file, '.json')}_failed.png`);
        await page.screenshot({ path: screenshot }).catch(() => {});
        report.results[file] = { error: `${error.message}`, screenshot };
      } finally {
        await context.close();
      }
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report));
}

runMain(main);
