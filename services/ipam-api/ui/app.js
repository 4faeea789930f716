// The operators' page: a single page that reads the IPAM API it is served by. Plain JavaScript
// (no build step, no framework, nothing fetched from elsewhere), so it ships inside the binary and
// works air-gapped. Every value from the API reaches the page through textContent, never as HTML.
//
// Authentication is the API's own: the bearer token the operator types is kept in sessionStorage
// (this tab only) and sent as `Authorization` on every request. A 401 shows the sign-in prompt and
// nothing else. Endpoints added after this page was written (host and vNIC lists, history as of a
// time) are used when the API has them and skipped with a note when it answers 404.

const TOKEN_KEY = "ipam.token";
const PAGE_SIZE = 50;
const LIVE_KEPT = 200;
/** A host is shown silent after this long without a heartbeat: placement's default timeout. */
const SILENT_AFTER_SECS = 15;

class Unauthorized extends Error {}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

const $ = (id) => document.getElementById(id);

/** Builds an element: h("td", {class: "num"}, "42", otherNode). Strings become text nodes. */
function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(extra = {}) {
  const all = { Accept: "application/json", ...extra };
  const t = token();
  if (t) all.Authorization = `Bearer ${t}`;
  return all;
}

/** GET (or another method) on the API; throws Unauthorized on 401, ApiError on other failures. */
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = body && body.error ? body.error : {};
    throw new ApiError(response.status, error.code, error.message);
  }
  return body;
}

/** Like api(), but answers null when the endpoint or the thing is not there (404). */
async function maybe(path) {
  try {
    return await api(path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return null;
    throw error;
  }
}

/** The items of a list answer, whatever the list is called (`hosts`, `items`, ...) or a bare array. */
function items(body, name) {
  if (!body) return [];
  if (Array.isArray(body)) return body;
  for (const key of [name, "items", "data"]) if (Array.isArray(body[key])) return body[key];
  return [];
}

const fmt = {
  time(text) {
    if (!text) return "—";
    const date = new Date(text);
    return Number.isNaN(date.getTime()) ? String(text) : date.toLocaleString();
  },
  ago(text) {
    if (!text) return "never";
    const secs = Math.round((Date.now() - new Date(text).getTime()) / 1000);
    if (secs < 1) return "just now";
    if (secs < 90) return `${secs} s ago`;
    if (secs < 5400) return `${Math.round(secs / 60)} min ago`;
    return `${Math.round(secs / 3600)} h ago`;
  },
  list(values) {
    return values && values.length ? values.join(", ") : "—";
  },
  pct(ratio) {
    return `${Math.round((ratio || 0) * 1000) / 10}%`;
  },
  owner(owner) {
    if (!owner) return "—";
    if (owner.kind === "vnic") return `vNIC ${owner.vnic_id}`;
    if (owner.kind === "dhcp_server") return `DHCP server of host ${owner.host_id}`;
    return JSON.stringify(owner);
  },
};

/** A utilization bar that a screen reader reads as "used 42 of 510, 8.2%". */
function bar(used, size, ratio) {
  const share = Math.max(0, Math.min(1, ratio ?? (size ? used / size : 0)));
  const level = share >= 0.95 ? "full" : share >= 0.8 ? "high" : "";
  // Through the CSSOM: the Content-Security-Policy refuses style attributes.
  const fill = h("span");
  fill.style.width = `${(share * 100).toFixed(1)}%`;
  return h(
    "div",
    {
      class: `bar ${level}`,
      role: "meter",
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": Math.round(share * 100),
      "aria-label": `${used} used of ${used + (size - used > 0 ? size - used : 0)}, ${fmt.pct(share)}`,
    },
    fill,
  );
}

function table(caption, columns, rows, empty = "None.") {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.label)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((cell, i) => h("td", { class: columns[i].class }, cell))))),
    ),
  );
}

function pill(text, kind) {
  return h("span", { class: `pill ${kind}` }, text);
}

/** A vNIC reservation's way to its guest (reserved, served, leased); a dash for a server's own. */
function vnicState(state) {
  if (!state) return "—";
  return pill(state, state === "leased" ? "ok" : state === "served" ? "warn" : "muted");
}

function serverState(state) {
  if (!state) return pill("no report", "warn");
  return pill(state, state === "running" ? "ok" : state === "failed" ? "bad" : "warn");
}

function link(href, text) {
  return h("a", { href }, text);
}

// Names of hosts, fetched once per page view and shared by everything on it.
const hostCache = new Map();
async function hostView(id) {
  if (!hostCache.has(id)) hostCache.set(id, maybe(`/v1/hosts/${encodeURIComponent(id)}`));
  return hostCache.get(id);
}
async function hostName(id) {
  const host = await hostView(id).catch(() => null);
  return host && host.name ? host.name : id;
}
async function hostLink(id) {
  return link(`#/host/${id}`, await hostName(id));
}

/** Every network in full, each with `count`, its number of reservations. */
async function networksInFull() {
  const list = items(await api("/v1/networks"), "networks");
  const views = await Promise.all(list.map((n) => api(`/v1/networks/${n.network_id}`)));
  return views.map((view, i) => ({
    ...view,
    count: typeof list[i].reservations === "number" ? list[i].reservations : items(view.reservations, "reservations").length,
  }));
}

/** The most reservations the page loads for one network (it searches and pages them itself). */
const RESERVATIONS_LOADED = 50000;

/**
 * A network's reservations: from its paged list (`/v1/networks/{id}/reservations`, following
 * `next`) when the API has one, else whatever its view holds. Answers [reservations, complete].
 */
async function reservationsOf(view) {
  const path = `/v1/networks/${encodeURIComponent(view.network_id)}/reservations?limit=5000`;
  let page = await maybeQuery(path);
  if (!page) return [items(view.reservations, "reservations"), !view.reservations_next];
  const all = [...items(page, "reservations")];
  while (page.next && all.length < RESERVATIONS_LOADED) {
    page = await api(`${path}&cursor=${encodeURIComponent(page.next)}`);
    all.push(...items(page, "reservations"));
  }
  return [all, !page.next];
}

/**
 * Every item of a paged list (`limit` and `cursor`, following `next`), up to `cap` items; null
 * when the API has no such list.
 */
async function allPages(path, name, cap = 20000) {
  const separator = path.includes("?") ? "&" : "?";
  let page = await maybeQuery(`${path}${separator}limit=1000`);
  if (!page) return null;
  const all = [...items(page, name)];
  while (page.next && all.length < cap) {
    page = await api(`${path}${separator}limit=1000&cursor=${encodeURIComponent(page.next)}`);
    all.push(...items(page, name));
  }
  return all;
}

/** Like maybe(), but also answers null when the API refuses the query string (an older API). */
async function maybeQuery(path) {
  try {
    return await maybe(path);
  } catch (error) {
    if (error instanceof ApiError && error.status === 400 && error.code === "invalid_query") return null;
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------
// Pages. Each answers the elements to show, and may return a function to call when it is left.

async function overview() {
  const networks = await networksInFull();
  const hostList = await allPages("/v1/hosts", "hosts");
  const out = [h("h1", {}, "Overview")];

  out.push(h("h2", { id: "networks-title" }, "Networks"));
  const networkRows = [];
  for (const n of networks) {
    const subnets = n.subnets || [];
    networkRows.push([
      link(`#/network/${n.network_id}`, n.name || n.network_id),
      subnets.length ? subnets.map((s) => h("div", {}, h("code", {}, s.cidr))) : "—",
      subnets.length ? subnets.map((s) => bar(s.used, s.used + s.free, s.utilization)) : "—",
      subnets.length ? subnets.map((s) => h("div", {}, `${s.used} used, ${s.free}${s.free_saturated ? "+" : ""} free`)) : "—",
      String(n.count),
    ]);
  }
  out.push(
    table(
      "Networks and the utilization of each subnet",
      [
        { label: "Network" },
        { label: "Subnets" },
        { label: "Utilization" },
        { label: "Addresses" },
        { label: "Reservations", class: "num" },
      ],
      networkRows,
      "No networks yet.",
    ),
  );

  out.push(h("h2", {}, "DHCP servers"));
  const serverRows = [];
  for (const n of networks) {
    for (const s of n.servers || []) {
      serverRows.push([
        link(`#/network/${n.network_id}`, n.name || n.network_id),
        s.host_name ? link(`#/host/${s.host_id}`, s.host_name) : await hostLink(s.host_id),
        h("code", {}, s.interface),
        String(s.epoch),
        serverState(s.status),
        s.reason || "—",
      ]);
    }
  }
  out.push(
    table(
      "Where each network's DHCP servers are placed",
      [
        { label: "Network" },
        { label: "Host" },
        { label: "Interface" },
        { label: "Epoch", class: "num" },
        { label: "State" },
        { label: "Why there" },
      ],
      serverRows,
      "No DHCP servers placed.",
    ),
  );

  out.push(h("h2", {}, "Hosts"));
  let hosts;
  let hostNote = null;
  if (hostList) {
    hosts = hostList;
  } else {
    const ids = [...new Set(networks.flatMap((n) => (n.servers || []).map((s) => s.host_id)))];
    hosts = (await Promise.all(ids.map((id) => hostView(id)))).filter(Boolean);
    hostNote = h("p", { class: "note" }, "This API has no host list (GET /v1/hosts): only hosts that run a DHCP server are shown.");
  }
  const hostRows = hosts.map((host) => {
    const secs = host.last_heartbeat ? (Date.now() - new Date(host.last_heartbeat).getTime()) / 1000 : Infinity;
    const live = host.status === "down" ? pill("down", "bad") : secs < SILENT_AFTER_SECS ? pill("alive", "ok") : pill("silent", "warn");
    return [
      link(`#/host/${host.host_id}`, host.name || host.host_id),
      host.status || "—",
      live,
      h("span", { title: host.last_heartbeat || "" }, fmt.ago(host.last_heartbeat)),
      String((host.assigned || []).length),
    ];
  });
  out.push(
    table(
      `Hosts and their liveness (silent: no heartbeat for ${SILENT_AFTER_SECS} s, the default heartbeat timeout)`,
      [{ label: "Host" }, { label: "Engine status" }, { label: "Liveness" }, { label: "Last heartbeat" }, { label: "Servers", class: "num" }],
      hostRows,
      "No hosts known.",
    ),
  );
  if (hostNote) out.push(hostNote);

  out.push(h("h2", {}, "Recent rejections by code"));
  const byCode = new Map();
  for (const n of networks) {
    for (const r of n.rejections || []) {
      const entry = byCode.get(r.code) || { count: 0, latest: null, network: n };
      entry.count += 1;
      if (!entry.latest || r.time > entry.latest.time) Object.assign(entry, { latest: r, network: n });
      byCode.set(r.code, entry);
    }
  }
  const rejectionRows = [...byCode.entries()]
    .sort((a, b) => b[1].count - a[1].count)
    .map(([code, e]) => [
      h("code", {}, code),
      String(e.count),
      e.latest.message,
      link(`#/network/${e.network.network_id}`, e.network.name || e.network.network_id),
      fmt.time(e.latest.time),
    ]);
  out.push(
    table(
      "Rejections kept by the API, grouped by code",
      [{ label: "Code" }, { label: "Count", class: "num" }, { label: "Latest message" }, { label: "Network" }, { label: "Latest" }],
      rejectionRows,
      "No recent rejections.",
    ),
  );
  return out;
}

async function network(id) {
  const n = await maybe(`/v1/networks/${encodeURIComponent(id)}`);
  if (!n) return [h("h1", {}, "Network not found"), h("p", {}, `The API knows no network ${id}.`)];
  const out = [h("h1", {}, `Network ${n.name || n.network_id}`)];
  out.push(
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Id"),
      h("dd", {}, h("code", {}, n.network_id)),
      h("dt", {}, "IPAM"),
      h("dd", {}, n.ipam_enabled === false ? "disabled" : "enabled"),
      h("dt", {}, "DHCP servers wanted"),
      h("dd", {}, n.servers_count ?? "default"),
    ),
  );

  out.push(h("h2", {}, "Subnets"));
  const cidrOf = new Map((n.subnets || []).map((s) => [s.subnet_id, s.cidr]));
  out.push(
    table(
      "Subnets of this network",
      [
        { label: "CIDR" },
        { label: "Gateway" },
        { label: "DNS" },
        { label: "NTP" },
        { label: "Used", class: "num" },
        { label: "Free", class: "num" },
        { label: "Utilization" },
      ],
      (n.subnets || []).map((s) => [
        h("code", {}, s.cidr),
        s.gateway,
        fmt.list(s.dns_servers),
        fmt.list(s.ntp_servers),
        String(s.used),
        `${s.free}${s.free_saturated ? "+" : ""}`,
        bar(s.used, s.used + s.free, s.utilization),
      ]),
      "No subnets.",
    ),
  );

  out.push(h("h2", { id: "reservations-title" }, "Reservations"));
  const [all, complete] = await reservationsOf(n);
  const search = h("input", {
    id: "reservation-search",
    type: "search",
    autocomplete: "off",
    placeholder: "52:54:00:…, 10.0.0.7, vNIC or VM id",
    "aria-describedby": "reservation-count",
  });
  const count = h("p", { id: "reservation-count", role: "status", class: "muted" });
  const holder = h("div", { id: "reservations" });
  const previous = h("button", { type: "button", class: "secondary" }, "Previous page");
  const next = h("button", { type: "button", class: "secondary" }, "Next page");
  let page = 0;
  const show = () => {
    const q = search.value.trim().toLowerCase();
    const matching = q
      ? all.filter((r) =>
          [r.mac, r.ip, r.owner && r.owner.vnic_id, r.owner && r.owner.vm_id, r.owner && r.owner.host_id]
            .filter(Boolean)
            .some((v) => String(v).toLowerCase().includes(q)),
        )
      : all;
    const pages = Math.max(1, Math.ceil(matching.length / PAGE_SIZE));
    page = Math.min(page, pages - 1);
    const shown = matching.slice(page * PAGE_SIZE, (page + 1) * PAGE_SIZE);
    count.textContent = matching.length
      ? `${matching.length} reservation${matching.length === 1 ? "" : "s"}${q ? " match" : ""}; page ${page + 1} of ${pages}.`
      : q
        ? "No reservation matches."
        : "No reservations.";
    previous.disabled = page === 0;
    next.disabled = page >= pages - 1;
    holder.replaceChildren(
      table(
        `Reservations, page ${page + 1} of ${pages}`,
        [{ label: "IP" }, { label: "MAC" }, { label: "State" }, { label: "Holder" }, { label: "VM", class: "hide-narrow" }, { label: "Subnet", class: "hide-narrow" }, { label: "Since", class: "hide-narrow" }],
        shown.map((r) => [
          link(`#/lookup/${encodeURIComponent(r.ip)}`, r.ip),
          h("code", {}, r.mac),
          vnicState(r.state),
          r.owner && r.owner.kind === "vnic"
            ? link(`#/lookup/${r.owner.vnic_id}`, r.owner.vnic_id)
            : r.owner && r.owner.host_id
              ? h("span", {}, "DHCP server of ", link(`#/host/${r.owner.host_id}`, r.owner.host_id))
              : fmt.owner(r.owner),
          r.owner && r.owner.vm_id ? h("code", {}, r.owner.vm_id) : "—",
          h("code", {}, cidrOf.get(r.subnet_id) || r.subnet_id),
          fmt.time(r.since),
        ]),
        "",
      ),
    );
  };
  search.addEventListener("input", () => {
    page = 0;
    show();
  });
  previous.addEventListener("click", () => {
    page -= 1;
    show();
  });
  next.addEventListener("click", () => {
    page += 1;
    show();
  });
  out.push(
    h(
      "form",
      { role: "search", "aria-labelledby": "reservations-title", onsubmit: (e) => e.preventDefault() },
      h("div", { class: "field" }, h("label", { for: "reservation-search" }, "Search by MAC, IP, vNIC or VM"), search),
    ),
    count,
    complete ? null : h("p", { class: "note" }, `Only the first ${all.length} reservations are loaded; search narrows those.`),
    holder,
    h("div", { class: "pager" }, previous, next),
  );
  show();

  out.push(h("h2", {}, "DHCP servers"));
  const serverRows = [];
  for (const s of n.servers || []) {
    serverRows.push([
      s.host_name ? link(`#/host/${s.host_id}`, s.host_name) : await hostLink(s.host_id),
      h("code", {}, s.interface),
      String(s.epoch),
      serverState(s.status),
      s.reason || "—",
      fmt.time(s.since),
    ]);
  }
  out.push(
    table(
      "DHCP servers of this network: the epoch counts placements, the reason and time say how the current one came about",
      [{ label: "Host" }, { label: "Interface" }, { label: "Epoch", class: "num" }, { label: "State" }, { label: "Placed because" }, { label: "Since" }],
      serverRows,
      "No DHCP servers placed.",
    ),
  );
  out.push(h("h3", {}, "Placement history"));
  const controller = new AbortController();
  out.push(...(await serverHistory(n.network_id, controller.signal)));

  out.push(h("h2", {}, "Recent rejections"));
  out.push(
    table(
      "Rejections of requests on this network, newest first",
      [{ label: "Time" }, { label: "Code" }, { label: "Request" }, { label: "Message" }],
      (n.rejections || []).map((r) => [fmt.time(r.time), h("code", {}, r.code), r.request_type, r.message]),
      "No recent rejections.",
    ),
  );
  return { elements: out, leave: () => controller.abort() };
}

async function host(id) {
  const view = await maybe(`/v1/hosts/${encodeURIComponent(id)}`);
  if (!view) return [h("h1", {}, "Host not found"), h("p", {}, `The API knows no host ${id}.`)];
  const networks = new Map();
  const networkName = async (nid) => {
    if (!networks.has(nid)) networks.set(nid, maybe(`/v1/networks/${nid}`).catch(() => null));
    const n = await networks.get(nid);
    return link(`#/network/${nid}`, (n && n.name) || nid);
  };
  const out = [h("h1", {}, `Host ${view.name || view.host_id}`)];
  out.push(
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Id"),
      h("dd", {}, h("code", {}, view.host_id)),
      h("dt", {}, "Engine status"),
      h("dd", {}, view.status || "—"),
      h("dt", {}, "Last heartbeat"),
      h("dd", {}, `${fmt.ago(view.last_heartbeat)} (${fmt.time(view.last_heartbeat)})`),
    ),
  );
  out.push(h("h2", {}, "Networks attached"));
  const attached = [];
  for (const a of view.networks || []) attached.push([await networkName(a.network_id), h("code", {}, a.interface)]);
  out.push(table("Networks attached to this host", [{ label: "Network" }, { label: "Interface" }], attached, "No networks attached."));

  out.push(h("h2", {}, "DHCP servers"));
  const statusOf = new Map((view.server_statuses || []).map((s) => [s.network_id, s]));
  const serving = new Map((view.serving || []).map((s) => [s.network_id, s.epoch]));
  const rows = [];
  for (const a of view.assigned || []) {
    const status = statusOf.get(a.network_id);
    const current = status && status.epoch === a.epoch;
    rows.push([
      await networkName(a.network_id),
      String(a.epoch),
      serverState(current ? status.state : null),
      current ? status.detail || "—" : "—",
      serving.has(a.network_id) ? `yes (epoch ${serving.get(a.network_id)})` : "no",
    ]);
  }
  out.push(
    table(
      "DHCP servers placement assigned to this host",
      [{ label: "Network" }, { label: "Epoch", class: "num" }, { label: "State" }, { label: "Detail" }, { label: "In last heartbeat" }],
      rows,
      "This host runs no DHCP server.",
    ),
  );
  return out;
}

const MAC_RE = /^[0-9a-f]{2}([:-][0-9a-f]{2}){5}$/i;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const IP_RE = /^([0-9.]+|[0-9a-f:.]*:[0-9a-f:.]*)$/i;

/**
 * Whether the IP history takes `?at=`, asked once: an API without it refuses the query string
 * (400), one with it answers (404 for this address, which nobody holds).
 */
let historyAt = null;
async function apiOffersHistoryAt() {
  if (historyAt === null) {
    historyAt = api("/v1/ips/192.0.2.0/history?at=2000-01-01T00%3A00%3A00Z").then(
      () => true,
      (error) => {
        if (error instanceof Unauthorized) {
          historyAt = null;
          throw error;
        }
        return error instanceof ApiError && error.status === 404;
      },
    );
  }
  return historyAt;
}

/** Network names by id, for the ids in histories. */
async function networkNames() {
  const list = (await allPages("/v1/networks", "networks")) || items(await api("/v1/networks"), "networks");
  return new Map(list.map((n) => [n.network_id, n.name]));
}

function historyTable(caption, entries, networkNames = new Map()) {
  return table(
    caption,
    [
      { label: "IP" },
      { label: "Holder" },
      { label: "MAC" },
      { label: "Network" },
      { label: "Served by", class: "hide-narrow" },
      { label: "From" },
      { label: "To" },
      { label: "Released because" },
    ],
    entries.map((e) => [
      e.ip ? link(`#/lookup/${encodeURIComponent(e.ip)}`, e.ip) : "—",
      e.owner && e.owner.kind === "vnic" ? link(`#/lookup/${e.owner.vnic_id}`, e.owner.vnic_id) : fmt.owner(e.owner),
      h("code", {}, e.mac || "—"),
      h("span", {}, link(`#/network/${e.network_id}`, networkNames.get(e.network_id) || e.network_id), e.cidr ? ` (${e.cidr})` : ""),
      (e.served_by || []).length ? (e.served_by || []).map((s) => h("div", {}, link(`#/host/${s.host_id}`, s.name || s.host_id))) : "—",
      fmt.time(e.from),
      e.to ? fmt.time(e.to) : "still held",
      e.reason || "—",
    ]),
    "No history.",
  );
}

/** The addresses a vNIC holds: `addresses` (every one; a dual-stack vNIC has two), else an older API's one `reservation`. */
function vnicAddresses(vnic) {
  if (Array.isArray(vnic.addresses)) return vnic.addresses;
  return vnic.reservation ? [vnic.reservation] : [];
}

async function lookupResult(q, at) {
  if (MAC_RE.test(q)) {
    const mac = q.toLowerCase().replaceAll("-", ":");
    const history = await maybeQuery(`/v1/macs/${encodeURIComponent(mac)}/history`);
    if (history) return [h("h2", {}, `MAC ${mac}`), historyTable("The addresses this MAC held, oldest first", items(history, "history"), await networkNames())];
    const found = [];
    const networks = await networksInFull();
    const vnics = await maybeQuery(`/v1/vnics?mac=${encodeURIComponent(mac)}`);
    if (vnics) {
      for (const v of items(vnics, "vnics")) {
        // Every address of the vNIC (a dual-stack one holds two); an older API names one.
        for (const r of vnicAddresses(v)) {
          const n = networks.find((x) => x.network_id === r.network_id);
          found.push({ n: n || { network_id: r.network_id }, r: { ...r, owner: { kind: "vnic", vnic_id: v.vnic_id, vm_id: v.vm_id } } });
        }
      }
    } else {
      // Neither endpoint: look through every network's reservations.
      for (const n of networks) for (const r of (await reservationsOf(n))[0]) if (String(r.mac).toLowerCase() === mac) found.push({ n, r });
    }
    if (!found.length) return [h("p", {}, `No reservation holds MAC ${mac}.`)];
    return [
      h("h2", {}, `MAC ${mac}`),
      table(
        "Reservations holding this MAC",
        [{ label: "IP" }, { label: "Network" }, { label: "Holder" }, { label: "Since" }],
        found.map(({ n, r }) => [
          link(`#/lookup/${encodeURIComponent(r.ip)}`, r.ip),
          link(`#/network/${n.network_id}`, n.name || n.network_id),
          r.owner && r.owner.vnic_id ? link(`#/lookup/${r.owner.vnic_id}`, r.owner.vnic_id) : fmt.owner(r.owner),
          fmt.time(r.since),
        ]),
      ),
    ];
  }
  if (UUID_RE.test(q)) {
    const vnic = await maybe(`/v1/vnics/${q}`);
    if (vnic) {
      const held = vnicAddresses(vnic);
      const l = vnic.last_release;
      return [
        h("h2", {}, `vNIC ${vnic.vnic_id}`),
        h(
          "dl",
          { class: "facts" },
          h("dt", {}, "VM"),
          h("dd", {}, h("code", {}, vnic.vm_id)),
          h("dt", {}, held.length > 1 ? "Reservations" : "Reservation"),
          ...(held.length
            ? held.map((r) =>
                h("dd", {}, link(`#/lookup/${encodeURIComponent(r.ip)}`, r.ip), ` with MAC ${r.mac} on `, link(`#/network/${r.network_id}`, r.network_id), ` since ${fmt.time(r.since)}`, r.state ? ` (${r.state})` : ""),
              )
            : [h("dd", {}, "none")]),
          h("dt", {}, "Last release"),
          h("dd", {}, l ? `${l.ip} at ${fmt.time(l.at)} (${l.reason})` : "none"),
        ),
      ];
    }
    if (await maybe(`/v1/hosts/${q}`)) return [h("p", {}, "That is a host: ", link(`#/host/${q}`, "open its page"), ".")];
    if (await maybe(`/v1/networks/${q}`)) return [h("p", {}, "That is a network: ", link(`#/network/${q}`, "open its page"), ".")];
    return [h("p", {}, `No vNIC, host or network ${q} is known.`)];
  }
  if (IP_RE.test(q)) {
    const path = `/v1/ips/${encodeURIComponent(q)}/history${at ? `?at=${encodeURIComponent(at)}` : ""}`;
    const answer = await maybe(path);
    if (!answer) return [h("p", {}, `${q} was never reserved.`)];
    const entries = items(answer, "history");
    const names = await networkNames();
    const out = [h("h2", {}, `IP ${q}${at ? ` as of ${fmt.time(at)}` : ""}`)];
    if (at && !Array.isArray(answer.history) && answer.holder !== undefined) {
      out.push(h("p", {}, answer.holder ? `Held by ${fmt.owner(answer.holder.owner || answer.holder)}` : "Free at that time."));
    }
    out.push(historyTable("Who held this address, oldest first", entries, names));
    return out;
  }
  return [h("p", { class: "error" }, `“${q}” is not a MAC, an IP address or an id (a UUID).`)];
}

async function lookup(q, at) {
  const offersAt = await apiOffersHistoryAt();
  const input = h("input", { id: "lookup-q", name: "q", type: "search", autocomplete: "off", value: q || "", required: true });
  const atInput = offersAt ? h("input", { id: "lookup-at", name: "at", type: "datetime-local", step: 1 }) : null;
  if (atInput && at) {
    const d = new Date(at);
    atInput.value = new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 19);
  }
  const form = h(
    "form",
    {
      role: "search",
      "aria-label": "Look up a vNIC, MAC or IP",
      onsubmit: (e) => {
        e.preventDefault();
        const value = input.value.trim();
        if (!value) return;
        const when = atInput && atInput.value ? `?at=${encodeURIComponent(new Date(atInput.value).toISOString())}` : "";
        location.hash = `#/lookup/${encodeURIComponent(value)}${when}`;
      },
    },
    h("div", { class: "field" }, h("label", { for: "lookup-q" }, "vNIC id, MAC or IP address"), input),
    atInput ? h("div", { class: "field" }, h("label", { for: "lookup-at" }, "As of (for an IP; empty for its whole history)"), atInput) : null,
    h("button", { type: "submit" }, "Look up"),
  );
  const out = [h("h1", {}, "Lookup"), form];
  if (!offersAt) out.push(h("p", { class: "note" }, "This API does not offer history as of a time (?at=): the whole history is shown."));
  if (q) out.push(h("section", { id: "lookup-result", "aria-label": "Result" }, await lookupResult(q, offersAt ? at : null)));
  return out;
}

/**
 * Follows /v1/stream from `cursor` (null: from now) until `signal` aborts, reconnecting where it
 * left off. Read with fetch: EventSource cannot send the Authorization header. Calls
 * onEvent(type, envelope) per decision and onState(connected, text) when the connection changes.
 */
async function followStream(cursor, signal, onEvent, onState) {
  let lastId = cursor;
  while (!signal.aborted) {
    try {
      const extra = lastId ? { "Last-Event-ID": lastId } : {};
      const response = await fetch("/v1/stream", { headers: headers({ Accept: "text/event-stream", ...extra }), signal });
      if (response.status === 401) throw new Unauthorized();
      if (!response.ok || !response.body) throw new ApiError(response.status, null, `the stream answered HTTP ${response.status}`);
      onState(true, "Connected: new decisions appear at the top.");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let type = "message";
          let data = "";
          let id = null;
          for (const line of frame.split("\n")) {
            if (line.startsWith("event:")) type = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
            else if (line.startsWith("id:")) id = line.slice(3).trim();
          }
          if (id !== null) lastId = id;
          if (!data) continue;
          let envelope;
          try {
            envelope = JSON.parse(data);
          } catch {
            continue; // a frame that is not JSON is not ours to show
          }
          onEvent(type, envelope);
        }
      }
      onState(false, "The stream ended; reconnecting…");
    } catch (error) {
      if (signal.aborted) return;
      if (error instanceof Unauthorized) {
        showSignIn("The token was refused.");
        return;
      }
      onState(false, `The stream failed (${error.message}); reconnecting…`);
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

/** The page of decisions as they happen. */
function live() {
  const list = h("ol", { id: "live-log", role: "log", "aria-label": "Decisions, newest first" });
  const state = h("p", { id: "live-state", class: "muted" }, "Connecting…");
  const controller = new AbortController();
  const names = new Map();

  const describe = (envelope) => {
    const d = envelope.data || {};
    const parts = [];
    if (d.ip) parts.push(h("span", {}, "IP ", link(`#/lookup/${encodeURIComponent(d.ip)}`, d.ip)));
    if (d.mac) parts.push(h("span", {}, "MAC ", h("code", {}, d.mac)));
    if (d.owner && d.owner.vnic_id) parts.push(h("span", {}, "vNIC ", h("code", {}, d.owner.vnic_id)));
    if (d.host_id) parts.push(h("span", {}, "host ", link(`#/host/${d.host_id}`, names.get(d.host_id) || d.host_id)));
    if (d.epoch !== undefined) parts.push(h("span", {}, `epoch ${d.epoch}`));
    if (d.code) parts.push(h("span", {}, "code ", h("code", {}, d.code)));
    if (d.message) parts.push(h("span", {}, d.message));
    if (d.cidr) parts.push(h("span", {}, "subnet ", h("code", {}, d.cidr)));
    if (d.network_id) parts.push(h("span", {}, "network ", link(`#/network/${d.network_id}`, names.get(d.network_id) || d.network_id)));
    return parts;
  };

  // Names for the ids in events, best effort.
  api("/v1/networks")
    .then((body) => {
      for (const n of items(body, "networks")) if (n.name) names.set(n.network_id, n.name);
    })
    .catch(() => {});
  maybeQuery("/v1/hosts?limit=10000")
    .then((body) => {
      for (const host of items(body, "hosts")) if (host.name) names.set(host.host_id, host.name);
    })
    .catch(() => {});
  followStream(
    null,
    controller.signal,
    (type, envelope) => {
      const short = String(type).replace(/^ipam\./, "").replace(/\.v\d+$/, "");
      list.prepend(
        h("li", { "data-type": type }, h("time", { datetime: envelope.time }, fmt.time(envelope.time)), h("strong", {}, short), describe(envelope)),
      );
      while (list.children.length > LIVE_KEPT) list.lastElementChild.remove();
    },
    (connected, text) => {
      state.textContent = text;
      if (connected) state.dataset.connected = "true";
      else delete state.dataset.connected;
    },
  );
  return {
    elements: [
      h("h1", {}, "Live"),
      h("p", {}, "Reservations, releases, rejections and DHCP server placements, as the system decides them."),
      state,
      list,
    ],
    leave: () => controller.abort(),
  };
}

/**
 * The placements of one network's DHCP servers, oldest first, from the log: the stream from the
 * start of `ipam.dhcp-servers` (small: placements only) and from the read model's position on
 * `ipam.reservations` (so no reservation is replayed). Kept current until `signal` aborts.
 */
async function serverHistory(networkId, signal) {
  const rows = h("tbody");
  const note = h("p", { class: "note", id: "server-history-state" }, "Reading the placements from the log…");
  const holder = h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      { id: "server-history" },
      h("caption", {}, "Every placement and removal of this network's DHCP servers, oldest first"),
      h("thead", {}, h("tr", {}, ["Time", "Host", "Change", "Epoch", "Why"].map((label) => h("th", { scope: "col" }, label)))),
      rows,
    ),
  );
  const answer = (await maybeQuery("/v1/networks?position=true&limit=1")) || (await api("/v1/networks"));
  const positions = (answer && answer.position) || {};
  const cursor = Object.entries(positions)
    // Keys are `topic/partition`; topics may carry a deployment's prefix.
    .filter(([key]) => key.slice(0, key.lastIndexOf("/")).endsWith("ipam.reservations"))
    .map(([key, offset]) => `${key}:${offset}`)
    .join(",");
  followStream(
    cursor || "start",
    signal,
    (type, envelope) => {
      const d = envelope.data || {};
      if (d.network_id !== networkId || !type.includes("dhcp_server")) return;
      const change = type.includes("unassigned") ? "removed" : "placed";
      const host = h("td", {}, link(`#/host/${d.host_id}`, d.host_id));
      hostName(d.host_id).then((name) => host.firstChild && (host.firstChild.textContent = name));
      // Partitions interleave: keep the rows in time order (then by epoch, a placement before
      // its removal).
      const key = `${envelope.time}|${String(d.epoch).padStart(20, "0")}|${change === "placed" ? 0 : 1}`;
      const row = h(
        "tr",
        { "data-key": key },
        h("td", {}, fmt.time(envelope.time)),
        host,
        h("td", {}, change),
        h("td", { class: "num" }, String(d.epoch)),
        h("td", {}, d.reason || "—"),
      );
      const later = [...rows.children].find((other) => other.dataset.key > key);
      rows.insertBefore(row, later || null);
    },
    (connected) => {
      note.textContent = connected ? "Kept current as placement decides." : "Reconnecting to the log…";
    },
  );
  return [holder, note];
}

// ---------------------------------------------------------------------------------------------
// Routing and sign-in.

let leave = null;
let generation = 0;

function showSignIn(message) {
  $("page").replaceChildren();
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("sign-in-error").textContent = message || "";
  $("status").textContent = "Sign in to see the data.";
  $("token").focus();
}

function parseHash() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const [page, ...rest] = path.split("/");
  return { page: page || "overview", arg: rest.length ? decodeURIComponent(rest.join("/")) : "", params };
}

async function route() {
  if (leave) leave();
  leave = null;
  const mine = ++generation;
  const { page, arg, params } = parseHash();
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.page === page) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  hostCache.clear();
  $("status").textContent = "Loading…";
  try {
    let view;
    let title;
    if (page === "network") [view, title] = [await network(arg), "Network"];
    else if (page === "host") [view, title] = [await host(arg), "Host"];
    else if (page === "lookup") [view, title] = [await lookup(arg, params.get("at")), "Lookup"];
    else if (page === "live") [view, title] = [live(), "Live"];
    else [view, title] = [await overview(), "Overview"];
    const elements = Array.isArray(view) ? view : view.elements;
    if (mine !== generation) {
      if (view.leave) view.leave();
      return;
    }
    leave = view.leave || null;
    $("sign-in").hidden = true;
    $("sign-out").hidden = !token();
    $("page").replaceChildren(...elements.filter(Boolean));
    document.title = `${title} · IPAM`;
    $("status").textContent = `${title} loaded at ${new Date().toLocaleTimeString()}.`;
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof Unauthorized) {
      showSignIn(token() ? "The token was refused." : "");
      return;
    }
    $("page").replaceChildren(h("h1", {}, "Something went wrong"), h("p", { class: "error", role: "alert" }, error.message));
    $("status").textContent = "";
  }
}

$("sign-in-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const given = $("token").value.trim();
  if (!given) return;
  sessionStorage.setItem(TOKEN_KEY, given);
  try {
    await api("/v1/networks");
  } catch (error) {
    if (error instanceof Unauthorized) {
      sessionStorage.removeItem(TOKEN_KEY);
      showSignIn("That token was refused. Check it and try again.");
      return;
    }
  }
  $("token").value = "";
  $("sign-in").hidden = true;
  await route();
  $("main").focus({ preventScroll: true });
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  if (leave) leave();
  leave = null;
  showSignIn("Signed out.");
});

window.addEventListener("hashchange", async () => {
  await route();
  $("main").focus({ preventScroll: true });
});
route();
