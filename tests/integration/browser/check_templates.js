// Opens ComfyUI's template browser in the real front end, the way a person does, finds the pack's
// category, and opens each of its workflows from its card. Driven by test_templates.py.
//
// usage: node check_templates.js <server-url> <screenshot.png> <pack folder>
// prints one JSON object:
//   frontend_version   window.__COMFYUI_FRONTEND_VERSION__
//   categories         the pack's entry in the browser's side list was found and clicked (true/false)
//   cards              workflow names shown as cards in the pack's category, in page order
//   thumbnails         {name: {status, type, bytes}} for every thumbnail the page fetched from the pack
//   images             {name: [naturalWidth, naturalHeight]} of the picture on each card
//   opened             {name: {nodes: [type, ...] sorted, template_dialog_open}} after clicking its card
//
// Both tested front ends (1.27.10 on ComfyUI 0.3.64, 1.49.6 on ComfyUI 0.33.0) list a pack's
// workflows/*.json under its folder name ("Custom Nodes" / "EXTENSIONS" in the side list) and
// show /api/workflow_templates/<pack folder>/<name>.jpg as the card's picture.

const { launchChromium, openFrontend, runMain } = require('./frontend.js');


async function main() {
  const [url, screenshot, pack] = process.argv.slice(2);
  const browser = await launchChromium();
  const prefix = `/api/workflow_templates/${pack}/`;
  const report = {
    frontend_version: null, categories: false, cards: [], thumbnails: {}, images: {}, opened: null,
  };
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
    page.on('response', async (response) => {
      const path = decodeURIComponent(new URL(response.url()).pathname);
      if (!path.startsWith(prefix) || !path.endsWith('.jpg')) return;
      const headers = response.headers();
      report.thumbnails[path.slice(prefix.length, -4)] = {
        status: response.status(), type: headers['content-type'] || '', bytes: Number(headers['content-length'] || 0),
      };
    });
    await openFrontend(page, url);
    report.frontend_version = await page.evaluate(() => window.__COMFYUI_FRONTEND_VERSION__ ?? null);
    await page.keyboard.press('Escape');
    // The sidebar's / menu's "Templates" entry runs this command on both front ends.
    await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'));
    const dialog = page.locator('[role="dialog"]').last();
    await dialog.waitFor({ state: 'visible', timeout: 30000 });
    const entry = dialog.getByText(pack, { exact: true }).first();
    await entry.waitFor({ state: 'visible', timeout: 30000 });
    await entry.click();
    report.categories = true;
    // The cards: one per workflow, titled by its file name. Wait for all, scrolling so lazy pictures load.
    const cardTitles = () => page.evaluate(() => {
      const names = window.__dlaExpected || [];
      const root = [...document.querySelectorAll('[role="dialog"]')].pop();
      const texts = [...root.querySelectorAll('*')]
        .filter((el) => el.children.length === 0 && names.includes(el.textContent.trim()))
        .map((el) => el.textContent.trim());
      return [...new Set(texts)];
    });
    const expected = await page.evaluate(async (prefixPath) => {
      const listed = await (await fetch('/api/workflow_templates')).json();
      const names = Object.entries(listed).filter(([key]) => prefixPath.includes(`/${key}/`)).flatMap(([, v]) => v);
      window.__dlaExpected = names;
      return names;
    }, prefix);
    // Front end 1.27 shows 12 cards a page and loads the next when its trigger below the last card comes into view.
    const showAllCards = async () => {
      const shown = page.locator('[role="dialog"]').last();
      for (let i = 0; i < 40; i += 1) {
        const seen = await cardTitles();
        if (seen.length >= expected.length) break;
        if (seen.length) await shown.getByText(seen[seen.length - 1], { exact: true }).first().scrollIntoViewIfNeeded();
        await page.mouse.wheel(0, 600);
        await page.waitForTimeout(250);
      }
    };
    await showAllCards();
    report.cards = await cardTitles();
    // Each card's picture, as decoded by the browser (the front ends show it through a blob: URL).
    for (const name of report.cards) {
      await dialog.getByText(name, { exact: true }).first().scrollIntoViewIfNeeded();
      for (let i = 0; i < 20; i += 1) {
        const size = await page.evaluate((cardName) => {
          const root = [...document.querySelectorAll('[role="dialog"]')].pop();
          const title = [...root.querySelectorAll('*')]
            .find((el) => el.children.length === 0 && el.textContent.trim() === cardName);
          let card = title;
          for (let up = 0; card && up < 8 && !card.querySelector('img'); up += 1) card = card.parentElement;
          const img = card && card.querySelector('img');
          return img && img.complete && img.naturalWidth ? [img.naturalWidth, img.naturalHeight] : null;
        }, name);
        if (size) { report.images[name] = size; break; }
        await page.waitForTimeout(250);
      }
    }
    await dialog.getByText(report.cards[0], { exact: true }).first().scrollIntoViewIfNeeded();
    // The picture for the README / the test artifacts: wait until the cards in view show their pictures.
    await page.waitForFunction(() => {
      const root = [...document.querySelectorAll('[role="dialog"]')].pop();
      const box = root.getBoundingClientRect();
      const inView = [...root.querySelectorAll('img')].filter((img) => {
        const r = img.getBoundingClientRect();
        return r.height > 0 && r.top >= box.top && r.bottom <= box.bottom;
      });
      return inView.length > 0 && inView.every((img) => img.complete && img.naturalWidth > 0);
    }, null, { timeout: 10000 }).catch(() => {});
    await page.waitForTimeout(1000);
    await page.screenshot({ path: screenshot });
    // Open every workflow from its card, as a person does: the front end fetches <name>.json from the
    // pack and loads it (1.49.6 in a new tab). The template browser is opened afresh for each.
    report.opened = {};
    for (const name of report.cards) {
      if (Object.keys(report.opened).length > 0) {
        await page.keyboard.press('Escape');  // e.g. 0.3.64's missing-nodes dialog for the FLUX.2 ones
        await page.waitForTimeout(300);
        await page.evaluate(() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates'));
        const again = page.locator('[role="dialog"]').last();
        await again.waitFor({ state: 'visible', timeout: 30000 });
        await again.getByText(pack, { exact: true }).first().click();
        await showAllCards();
      }
      await page.evaluate(() => window.app.graph.clear());
      const card = page.locator('[role="dialog"]').last().getByText(name, { exact: true }).first();
      await card.scrollIntoViewIfNeeded();
      await card.click();
      await page.waitForFunction(() => window.app.graph._nodes.length > 0, null, { timeout: 30000 });
      await page.waitForTimeout(1000);
      report.opened[name] = await page.evaluate((packName) => ({
        nodes: window.app.graph._nodes.map((node) => node.type).sort(),
        template_dialog_open: [...document.querySelectorAll('[role="dialog"]')]
          .some((el) => el.offsetParent !== null && el.innerText.includes(packName)),
      }), pack);
    }
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report));
}

runMain(main);
