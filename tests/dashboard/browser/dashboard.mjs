// Drives the dashboard in Debian's headless Chromium (run by tests/dashboard/test_browser.py):
// enter the chaos token, inject a 100% error rate into payments by clicking, place orders,
// then wait until the page shows the payments breaker OPEN and sagas COMPENSATED.
// Prints one JSON line with what the page showed; exits non-zero with the reason otherwise.
import { env, launchChromium } from "./chromium.mjs";

const dashboardUrl = env("DASHBOARD_URL");
const ordersUrl = env("ORDERS_URL");
const token = env("CHAOS_TOKEN");
const screenshot = env("SCREENSHOT");
const userDataDir = env("USER_DATA_DIR");
const orders = Number(process.env.ORDERS || "6");

const context = await launchChromium(userDataDir);
const problems = [];
try {
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(20_000);
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  await page.goto(dashboardUrl);
  await page.locator("#connection", { hasText: "live" }).waitFor();
  await page.locator('tr.instance[data-instance^="payments-"]').first().waitFor();

  await page.fill("#token", token);
  await page.click('#token-form button[type="submit"]');

  const chaosRow = page.locator('tr[data-chaos="payments"]');
  await chaosRow.locator('input[name="error_rate"]').fill("100");
  await chaosRow.locator("button[data-inject]").click();
  await page.locator("#control-status", { hasText: "done" }).waitFor();
  await page.locator('tr.instance[data-instance^="payments-"] td[data-faults]', {
    hasText: "100%",
  }).first().waitFor();

  const placed = [];
  for (let n = 0; n < orders; n += 1) {
    const response = await fetch(`${ordersUrl}/orders`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ order_id: `browser-${n}` }),
    });
    placed.push((await response.json()).state);
  }

  await page.locator('tr[data-breaker="payments"][data-state="open"]').waitFor();
  await page.waitForFunction(
    (expected) => {
      const badge = document.querySelector('[data-saga-state="COMPENSATED"]');
      return badge && Number(badge.dataset.count) >= expected;
    },
    orders,
  );
  const breakerState = await page
    .locator('tr[data-breaker="payments"] .badge')
    .first()
    .textContent();
  const compensated = await page
    .locator('[data-saga-state="COMPENSATED"]')
    .getAttribute("data-count");
  const compensatedRows = await page.locator('#sagas tr[data-state="COMPENSATED"]').count();
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({
    breaker: breakerState.trim(),
    compensated: Number(compensated),
    compensatedRows,
    placed,
    problems,
  }));
} catch (error) {
  console.error(`browser test failed: ${error.stack || error}`);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await context.close();
}
