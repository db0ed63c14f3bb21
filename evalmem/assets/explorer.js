// The report's example explorer: evalmem/explorer.py embeds it with its data (#evx-data). DOM via textContent only.
(function () {
  "use strict";
  const root = document.getElementById("explore");
  const D = JSON.parse(document.getElementById("evx-data").textContent);
  const $ = (id) => document.getElementById(id);
  const sets = new Map(D.sets.map((s) => [s.name, {n: s.n, ids: new Set(s.ids.map(String))}]));
  const show = (t) => t.replace(/\r/g, "\u240d").replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  const piece = (id) => show(D.tok[id] !== undefined ? D.tok[id] : "\ufffd");
  let state = {set: "", sort: "rank", page: 0}, full = false;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function option(select, value, label) {
    const o = el("option", "", label);
    o.value = value;
    select.appendChild(o);
  }
  function fillControls() {
    option($("evx-set"), "", "all embedded examples");
    for (const s of D.sets) option($("evx-set"), s.name, s.label + " (" + s.n + ")");
    option($("evx-sort"), "rank", "most memorized");
    D.models.forEach((m) => option($("evx-sort"), "match_len:" + m, "match_len of " + m));
    if (D.has_risk) option($("evx-sort"), "risk", "predicted risk");
    const width = Math.max(12, ...D.models.map((m) => m.length + 8));
    root.style.setProperty("--evx-lab", width + "ch");
  }
  function sortKey(sort) {
    if (sort === "risk") return (r) => (r.r === null ? -Infinity : r.r);
    const i = D.models.indexOf(sort.slice(10));
    return (r) => (r.m[i] ? r.m[i][0] : -1);
  }
  function selected() {
    const s = state.set ? sets.get(state.set) : null;
    const rows = s ? D.rows.filter((r) => s.ids.has(String(r.id))) : D.rows.slice();
    if (state.sort !== "rank") {
      const key = sortKey(state.sort);
      rows.sort((a, b) => key(b) - key(a));  // stable: ties keep the most-memorized order
    }
    return rows;
  }
  function tokens(box, row, entry) {
    const s = row.s, n = entry[0], tail = entry[2];
    if (entry[1] && !full) {  // an exact continuation is the true suffix again: say so in one line
      box.appendChild(el("span", "evx-same", "\u2713 exact: all " + s.length + " tokens of the true suffix"));
      return;
    }
    for (let i = 0; i < n && i < s.length; i++) box.appendChild(el("span", "evx-m", piece(s[i])));
    if (tail === null) {
      if (n < s.length) box.appendChild(el("span", "evx-nd", "\u2717 rest not decoded"));
      return;
    }
    tail.forEach((t, k) => {
      const j = n + k, expected = j < s.length ? s[j] : null;
      const cls = k === 0 && !entry[1] ? "evx-x" : (t === expected ? "evx-e" : "");
      const span = el("span", cls, piece(t));
      if (cls === "evx-x") span.title = "generated " + JSON.stringify(D.tok[t]) + " (id " + t + "), expected " +
        (expected === null ? "nothing" : JSON.stringify(D.tok[expected]) + " (id " + expected + ")");
      box.appendChild(span);
    });
  }
  function line(grid, label, box) {
    grid.appendChild(label);
    grid.appendChild(box);
  }
  function renderRow(row) {
    const art = el("article", "evx-row");
    art.dataset.id = String(row.id);
    const head = el("div", "evx-head");
    head.appendChild(el("span", "evx-id", String(row.id)));
    const exact = D.models.filter((m, i) => row.m[i] && row.m[i][1]);
    head.appendChild(el("span", "", exact.length ? "memorized by " + exact.join(", ") : "memorized by none"));
    if (D.has_risk) head.appendChild(el("span", "", "risk " + (row.r === null ? "\u2013" : row.r.toFixed(3))));
    art.appendChild(head);
    const grid = el("div", "evx-grid");
    line(grid, el("div", "evx-lab", "prefix"), el("div", "evx-txt evx-pre", row.p.map(piece).join("")));
    const truth = el("div", "evx-txt");
    row.s.forEach((t) => truth.appendChild(el("span", "", piece(t))));
    line(grid, el("div", "evx-lab", "true suffix"), truth);
    D.models.forEach((m, i) => {
      const e = row.m[i], lab = el("div", "evx-lab");
      lab.appendChild(el("b", "", m + " "));
      lab.appendChild(el("span", e && e[1] ? "evx-ok" : "", e ? e[0] + "/" + row.s.length : "\u2013"));
      lab.title = m + (e ? ": " + e[0] + " of " + row.s.length + " suffix tokens matched" : ": no result");
      const box = el("div", "evx-txt");
      if (e) tokens(box, row, e); else box.appendChild(el("span", "evx-miss", "no result for this example"));
      line(grid, lab, box);
    });
    art.appendChild(grid);
    return art;
  }
  function note(rows) {
    const s = state.set ? sets.get(state.set) : null;
    if (state.unknown) return "No set named \u201c" + state.unknown + "\u201d in this report: showing all examples.";
    if (s && s.n > rows.length) return (s.n - rows.length) + " more of this set's " + s.n +
      " examples not shown (not embedded in this page).";
    if (!s && D.left_out) return D.left_out + " more not shown (the page keeps the " + D.rows.length +
      " most memorized).";
    return "";
  }
  function render() {
    const rows = selected(), pages = Math.max(1, Math.ceil(rows.length / D.page_size));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * D.page_size, page = rows.slice(start, start + D.page_size);
    const frag = document.createDocumentFragment();
    page.forEach((r) => frag.appendChild(renderRow(r)));
    $("evx-rows").replaceChildren(frag);
    $("evx-count").textContent = rows.length + (rows.length === 1 ? " example" : " examples") +
      (rows.length > page.length ? " \u00b7 showing " + (start + 1) + "\u2013" + (start + page.length) : "");
    $("evx-page").textContent = "page " + (state.page + 1) + " of " + pages;
    $("evx-prev").disabled = state.page === 0;
    $("evx-next").disabled = state.page >= pages - 1;
    $("evx-note").textContent = note(rows);
    $("evx-set").value = state.set;
    $("evx-sort").value = state.sort;
  }
  function fromHash() {
    const h = location.hash;
    if (!h.startsWith("#explore")) return false;
    const q = new URLSearchParams(h.indexOf("?") < 0 ? "" : h.slice(h.indexOf("?") + 1));
    const set = q.get("set") || "", sort = q.get("sort") || "rank";
    const sortOk = sort === "rank" || (sort === "risk" && D.has_risk) ||
      (sort.startsWith("match_len:") && D.models.includes(sort.slice(10)));
    state = {set: sets.has(set) ? set : "", sort: sortOk ? sort : "rank", page: 0,
             unknown: set && !sets.has(set) ? set : ""};
    return true;
  }
  function toHash() {
    const q = new URLSearchParams();
    if (state.set) q.set("set", state.set);
    if (state.sort !== "rank") q.set("sort", state.sort);
    const s = q.toString().replace(/%3A/g, ":");
    history.replaceState(null, "", "#explore" + (s ? "?" + s : ""));  // shareable, fires no hashchange
  }
  function onControl(patch) {
    state = Object.assign({}, state, patch, {unknown: ""});
    toHash();
    render();
  }
  fillControls();
  $("evx-set").addEventListener("change", (e) => onControl({set: e.target.value, page: 0}));
  $("evx-sort").addEventListener("change", (e) => onControl({sort: e.target.value, page: 0}));
  $("evx-full").addEventListener("change", (e) => { full = e.target.checked; render(); });
  $("evx-prev").addEventListener("click", () => { state.page--; render(); root.scrollIntoView(); });
  $("evx-next").addEventListener("click", () => { state.page++; render(); root.scrollIntoView(); });
  window.addEventListener("hashchange", () => { if (fromHash()) { render(); root.scrollIntoView(); } });
  const linked = fromHash();
  render();
  if (linked) root.scrollIntoView();
})();
