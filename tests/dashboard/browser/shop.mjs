// Drives the dashboard of the real reference shop in Debian's headless Chromium (run by
// tests/shop/test_browser.py): enter the chaos token, click a 100% error rate into the
// payment provider, place orders through the gateway with demo JWTs until the page shows
// payments' breaker OPEN, click the fault clear, place an order whose card is declined,
// and wait until the page shows that saga COMPENSATED; also reads the database-pool panel
// and checks that no panel scrolls sideways.
// Prints one JSON line with what the page showed; exits non-zero with the reason otherwise.
import { env, launchChromium } from "./chromium.mjs";

const dashboardUrl = env("DASHBOARD_URL");
const gatewayUrl = env("GATEWAY_URL");
const token = env("CHAOS_TOKEN");
const jwts = JSON.parse(env("JWTS")); // demo JWTs, one per customer, to spread the rate limit
const declinedJwt = env("DECLINED_JWT"); // a customer whose card the provider declines
const screenshot = env("SCREENSHOT");
const screenshotOpen = env("SCREENSHOT_OPEN");
const userDataDir = env("USER_DATA_DIR");
const maxOrders = Number(env("MAX_ORDERS"));

const PROVIDER = "payment-provider";
const BREAKER_OPEN = `tr[data-breaker="${PROVIDER}"][data-state="open"]`;

// POST /web/api/orders the way a well-behaved web client does: the same Idempotency-Key
// on every retry while the system answers 5xx, 409 or 429 (the gateway's rate limit).
async function placeOrder(jwt, n) {
  const headers = {
    "content-type": "application/json",
    authorization: `Bearer ${jwt}`,
    "idempotency-key": `browser-${process.pid}-${n}`,
  };
  const body = JSON.stringify({
    lines: [{ product_id: "p-006", quantity: 1 }],
    flow: "orchestrated",
  });
  let last = "no answer";
  for (let attempt = 0; attempt < 40; attempt += 1) {
    try {
      const response = await fetch(`${gatewayUrl}/web/api/orders`, { method: "POST", headers, body });
      const text = await response.text();
      last = `${response.status} ${text.slice(0, 200)}`;
      if (response.status === 202) return JSON.parse(text).order_id;
      if (response.status < 500 && response.status !== 409 && response.status !== 429) break;
    } catch (error) {
      last = String(error);
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`order ${n} was not accepted: ${last}`);
}

const compensatedOnPage = (page) => page.evaluate(() => {
  const badge = document.querySelector('[data-saga-state="COMPENSATED"]');
  return badge ? Number(badge.dataset.count) : 0;
});

// What the page showed when a wait ran out: the sagas and breakers, and a screenshot.
async function showPage(page) {
  if (!page) return;
  try {
    for (const selector of ["#saga-counts", "#sagas tbody", "#breakers tbody", "#control-status"]) {
      const text = await page.locator(selector).innerText({ timeout: 1000 });
      console.error(`${selector}:\n${text}`);
    }
    await page.screenshot({ path: screenshot, fullPage: true, timeout: 5000 });
  } catch (error) {
    console.error(`could not read the page: ${error}`);
  }
}

const context = await launchChromium(userDataDir);
const problems = [];
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(30_000);
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  await page.goto(dashboardUrl);
  await page.locator("#connection", { hasText: "live" }).waitFor();
  await page.locator(`tr.instance[data-instance^="${PROVIDER}-"]`).first().waitFor();
  const breakerBefore = await page.locator(`tr[data-breaker="${PROVIDER}"]`).first()
    .getAttribute("data-state");

  await page.fill("#token", token);
  await page.click('#token-form button[type="submit"]');

  const chaosRow = page.locator(`tr[data-chaos="${PROVIDER}"]`);
  await chaosRow.locator('input[name="error_rate"]').fill("100");
  await chaosRow.locator("button[data-inject]").click();
  await page.locator("#control-status", { hasText: "done" }).waitFor();
  await page.locator(`tr.instance[data-instance^="${PROVIDER}-"] td[data-faults]`, {
    hasText: "100%",
  }).first().waitFor();

  // Each charge fails at the provider (its outcome unknown, so orders keeps retrying
  // it): a few orders trip payments' breaker towards the provider.
  const outage = [];
  const compensatedBefore = await compensatedOnPage(page);
  while ((await page.locator(BREAKER_OPEN).count()) === 0) {
    if (outage.length >= maxOrders) {
      throw new Error(`the page never showed ${PROVIDER} open after ${outage.length} orders`);
    }
    outage.push(await placeOrder(jwts[outage.length % jwts.length], outage.length));
    await page.waitForTimeout(300); // the dashboard polls once a second
  }
  const breakerShown = await page.locator(`${BREAKER_OPEN} .badge`).first().textContent();
  const breakersOpen = await page.locator('#breakers tr[data-state="open"]')
    .evaluateAll((rows) => rows.map((row) => row.dataset.breaker));
  await page.screenshot({ path: screenshotOpen, fullPage: true });

  // End the outage from the page; then a declined card is a definite "no": its saga
  // compensates once orders' own breaker towards payments lets calls through again.
  await chaosRow.locator("button[data-clear]").click();
  const leftOver = await chaosRow.locator("[name=error_rate]").inputValue();
  if (leftOver !== "0") throw new Error(`the error-rate field still says ${leftOver} after clear`);
  await page.locator("#control-status", { hasText: "done" }).waitFor();
  await page.locator(`tr.instance[data-instance^="${PROVIDER}-"] td[data-faults]`, {
    hasText: "none",
  }).first().waitFor();
  const declined = await placeOrder(declinedJwt, "declined");
  await page.locator(`#sagas tr[data-saga="${declined}"][data-state="COMPENSATED"]`)
    .waitFor({ timeout: 75_000 });
  const compensatedRows = await page.locator('#sagas tr[data-state="COMPENSATED"]')
    .evaluateAll((rows) => rows.map((row) => ({
      saga: row.dataset.saga,
      failed: row.cells[2].textContent.trim(),
      timeline: row.querySelector(".timeline").textContent.trim(),
    })));
  // Every section fits the 1400 px window: nothing scrolls sideways (the saga timelines
  // once did, inside a narrow column).
  const clipped = await page.locator("main section").evaluateAll((sections) => sections
    .filter((section) => !section.hidden && section.scrollWidth > section.clientWidth + 1)
    .map((section) => section.querySelector("h2").textContent));
  const pools = await page.locator("#pools [data-pool]")
    .evaluateAll((cells) => cells.map((c) => `${c.closest("tr").dataset.instance} ${c.dataset.pool}`));
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({
    breakerBefore,
    breaker: breakerShown.trim(),
    breakersOpen,
    clipped,
    pools,
    compensated: await compensatedOnPage(page),
    compensatedBefore,
    compensatedRows,
    declined,
    outage,
    problems,
  }));
} catch (error) {
  console.error(`browser test failed: ${error.stack || error}`);
  await showPage(context.pages()[0]);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await context.close();
}
