// Drives shipyard's registry with the unmodified npm `consul` client; prints what it saw as JSON.
import Consul from "consul";

const [host, port, ttlServiceId] = process.argv.slice(2);
const consul = new Consul({ host, port: Number(port) });
const seen = {};

await consul.agent.service.register({
  name: "npm-web",
  id: "npm-web-1",
  address: "127.0.0.1",
  port: 9001,
  tags: ["npm", "v2"],
  meta: { client: "npm" },
  check: { ttl: "30s", status: "passing" },
});
await consul.agent.service.register({
  Name: "npm-web",
  ID: ttlServiceId,
  Address: "127.0.0.1",
  Port: 9002,
  Check: { TTL: "30s" },
});
seen.services = Object.keys(await consul.agent.service.list()).sort();
seen.passingBefore = (await consul.health.service({ service: "npm-web", passing: true }))
  .map((entry) => entry.Service.ID)
  .sort();
await consul.agent.check.pass({ id: `service:${ttlServiceId}`, note: "warmed up" });
seen.passingAfter = (await consul.health.service({ service: "npm-web", passing: true }))
  .map((entry) => entry.Service.ID)
  .sort();
seen.catalog = (await consul.catalog.service.nodes("npm-web")).map((n) => n.ServicePort).sort();
seen.tags = (await consul.catalog.service.list())["npm-web"].sort();
seen.leader = await consul.status.leader();
await consul.agent.service.deregister("npm-web-1");
seen.afterDeregister = Object.keys(await consul.agent.service.list()).sort();
console.log(JSON.stringify(seen));
