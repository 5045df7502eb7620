/* workbench interactive views: heatmap, attention, edge graph, scorecard.
   Plain JavaScript drawing inline SVG; loads nothing from the network. Each view is a
   <div class="wb-view"> holding its data as JSON, followed by a script calling wbViews.boot. */
(function () {
  if (window.wbViews) return;

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function fmt(v) {
    if (v === null || v === undefined) return "NaN";
    var a = Math.abs(v);
    return (a !== 0 && (a < 1e-3 || a >= 1e4)) ? v.toExponential(3) : String(+v.toPrecision(4));
  }
  function mix(a, b, t) {
    return "rgb(" + [0, 1, 2].map(function (i) { return Math.round(a[i] + (b[i] - a[i]) * t); }).join(",") + ")";
  }
  var WHITE = [247, 247, 247], RED = [178, 24, 43], BLUE = [33, 102, 172];
  function diverging(v, vmax) {
    if (v === null) return "#ccc";
    var t = Math.max(-1, Math.min(1, v / vmax));
    return t >= 0 ? mix(WHITE, RED, t) : mix(WHITE, BLUE, -t);
  }
  function sequential(v) { return v === null ? "#ccc" : mix([255, 255, 255], BLUE, Math.max(0, Math.min(1, v))); }
  function tokenText(t) { return JSON.stringify(String(t)).slice(1, -1); }

  /* One tooltip per view: any element with data-tip shows its text while hovered. */
  function tooltips(root) {
    var tip = document.createElement("div");
    tip.className = "wb-tip";
    tip.style.display = "none";
    root.appendChild(tip);
    root.addEventListener("mouseover", function (e) {
      var el = e.target.closest ? e.target.closest("[data-tip]") : null;
      if (!el || !root.contains(el)) { tip.style.display = "none"; return; }
      tip.textContent = el.getAttribute("data-tip");
      tip.style.display = "block";
    });
    root.addEventListener("mousemove", function (e) {
      var box = root.getBoundingClientRect();
      tip.style.left = (e.clientX - box.left + 12) + "px";
      tip.style.top = (e.clientY - box.top + 12) + "px";
    });
    root.addEventListener("mouseleave", function () { tip.style.display = "none"; });
  }

  function heatmap(root, d) {
    var nr = d.rows.length, nc = d.cols.length;
    var cw = Math.max(6, Math.min(28, 760 / nc)), ch = Math.max(6, Math.min(22, 560 / nr));
    var showR = nr <= 60, showC = nc <= 60, left = showR ? 80 : 20, top = 8;
    var longest = Math.max.apply(null, d.cols.map(function (c) { return String(c).length; }));
    var bottom = showC ? Math.min(70, 12 + 5 * longest) : 10, w = left + nc * cw + 10, h = top + nr * ch + bottom;
    var vmax = 0;
    d.values.forEach(function (row) { row.forEach(function (v) { if (v !== null) vmax = Math.max(vmax, Math.abs(v)); }); });
    vmax = vmax || 1;
    var s = ['<svg class="wb-svg" width="' + w + '" height="' + h + '">'];
    for (var i = 0; i < nr; i++) {
      for (var j = 0; j < nc; j++) {
        var v = d.values[i][j];
        var label = d.head_grid ? "L" + d.rows[i] + "H" + d.cols[j]
          : d.rowdim + " " + d.rows[i] + ", " + d.coldim + " " + d.cols[j];
        var tip = label + ": " + fmt(v);
        if (d.low) tip += " [" + fmt(d.low[i][j]) + ", " + fmt(d.high[i][j]) + "]";
        var fill = d.centre ? diverging(v, vmax) : (v === null ? "#ccc" : mix([255, 255, 255], BLUE, Math.max(0, v) / vmax));
        s.push('<rect class="wb-cell" x="' + (left + j * cw) + '" y="' + (top + i * ch) + '" width="' + cw +
               '" height="' + ch + '" fill="' + fill + '" data-tip="' + esc(tip) + '"/>');
      }
      if (showR) s.push('<text x="' + (left - 4) + '" y="' + (top + i * ch + ch / 2 + 3) +
                        '" text-anchor="end" font-size="9">' + esc(d.rows[i]) + '</text>');
    }
    if (showC) d.cols.forEach(function (c, j) {
      var x = left + j * cw + cw / 2 + 3, y = top + nr * ch + 6;
      s.push('<text x="' + x + '" y="' + y + '" font-size="9" text-anchor="end" transform="rotate(-60 ' + x + ' ' + y +
             ')">' + esc(c) + '</text>');
    });
    s.push("</svg>");
    root.insertAdjacentHTML("beforeend", '<div class="wb-title">' + esc(d.title) + ' <span class="wb-dims">(' +
      esc(d.rowdim) + " down, " + esc(d.coldim) + ' across)</span></div>' + s.join("") +
      '<div class="wb-scale"><span>' + fmt(d.centre ? -vmax : 0) + '</span><span class="wb-bar' + (d.centre ? "" : " wb-seq") +
      '"></span><span>' + fmt(vmax) + "</span></div>");
  }

  function attention(root, d) {
    var n = d.tokens.length;
    var controls = document.createElement("div");
    controls.className = "wb-controls";
    controls.innerHTML = 'layer <select class="wb-layer"></select> head <select class="wb-head"></select>' +
      ' <span class="wb-current"></span>';
    root.appendChild(controls);
    var toks = document.createElement("div");
    toks.className = "wb-tokens";
    toks.innerHTML = d.tokens.map(function (t, i) {
      return '<span class="wb-tok" data-i="' + i + '">' + esc(tokenText(t)) + "</span>";
    }).join("");
    root.appendChild(toks);
    var grid = document.createElement("div");
    grid.className = "wb-grid";
    root.appendChild(grid);
    var layerSel = controls.querySelector(".wb-layer"), headSel = controls.querySelector(".wb-head");
    var layers = [];
    d.keys.forEach(function (k) { if (layers.indexOf(k[0]) < 0) layers.push(k[0]); });
    layerSel.innerHTML = layers.map(function (l) { return '<option value="' + l + '">' + l + "</option>"; }).join("");
    var current = 0;
    function fillHeads() {
      var l = +layerSel.value;
      headSel.innerHTML = d.keys.map(function (k, idx) {
        return k[0] === l ? '<option value="' + idx + '">' + k[1] + "</option>" : "";
      }).join("");
    }
    function draw() {
      current = +headSel.value;
      var k = d.keys[current], A = d.patterns[current];
      root.setAttribute("data-head", "L" + k[0] + "H" + k[1]);
      controls.querySelector(".wb-current").textContent = "L" + k[0] + "H" + k[1];
      var c = Math.max(4, Math.min(18, 480 / n)), left = n <= 60 ? 90 : 10, top = 4;
      var s = ['<svg class="wb-svg" width="' + (left + n * c + 10) + '" height="' + (top + n * c + 10) + '">'];
      for (var q = 0; q < n; q++) {
        for (var j = 0; j < n; j++) {
          s.push('<rect class="wb-cell" x="' + (left + j * c) + '" y="' + (top + q * c) + '" width="' + c + '" height="' + c +
                 '" fill="' + sequential(A[q][j]) + '" data-tip="' + esc("query " + q + " " + tokenText(d.tokens[q]) + " \u2192 key " + j +
                 " " + tokenText(d.tokens[j]) + ": " + fmt(A[q][j])) + '"/>');
        }
        if (n <= 60) s.push('<text x="' + (left - 4) + '" y="' + (top + q * c + c / 2 + 3) + '" font-size="9" text-anchor="end">' +
                            esc(tokenText(d.tokens[q])) + "</text>");
      }
      s.push("</svg>");
      grid.innerHTML = '<div class="wb-note">queries down, keys across; hover a token above to shade its attention</div>' + s.join("");
    }
    toks.addEventListener("mouseover", function (e) {
      var el = e.target.closest(".wb-tok");
      if (!el) return;
      var q = +el.getAttribute("data-i"), A = d.patterns[current];
      toks.querySelectorAll(".wb-tok").forEach(function (t, j) {
        t.style.background = "rgba(33,102,172," + (A[q][j] || 0) + ")";
        t.style.outline = j === q ? "2px solid #b2182b" : "";
        t.setAttribute("data-tip", "attention of " + tokenText(d.tokens[q]) + " to " + tokenText(d.tokens[j]) + ": " + fmt(A[q][j]));
      });
    });
    toks.addEventListener("mouseleave", function () {
      toks.querySelectorAll(".wb-tok").forEach(function (t) { t.style.background = ""; t.style.outline = ""; });
    });
    layerSel.addEventListener("change", function () { fillHeads(); draw(); });
    headSel.addEventListener("change", draw);
    fillHeads();
    draw();
  }

  function graph(root, d) {
    var nodes = d.nodes, E = d.edges, nl = d.n_layers, ncol = d.n_cols;
    var dx = Math.max(14, Math.min(60, 760 / ncol)), dy = Math.max(12, Math.min(40, 560 / (nl + 2)));
    var left = 50, top = 10, w = left + ncol * dx + 20, h = top + (nl + 2) * dy + 10;
    function X(n) { return left + nodes[n][1] * dx + dx / 2; }
    function Y(n) { return top + (nl - nodes[n][2]) * dy + dy / 2; }
    var smax = E.length ? Math.abs(E[0][2]) || 1 : 1;
    var controls = document.createElement("div");
    controls.className = "wb-controls";
    controls.innerHTML = 'edges <input type="range" class="wb-slider" min="1" max="' + Math.max(1, E.length) + '" value="' +
      d.initial + '"> <span class="wb-count"></span> <button class="wb-reset" type="button">show all nodes</button>';
    root.appendChild(controls);
    var holder = document.createElement("div");
    root.appendChild(holder);
    var slider = controls.querySelector(".wb-slider"), focus = null;
    function draw() {
      var start = window.performance ? performance.now() : 0;
      var k = +slider.value, s = ['<svg class="wb-svg" width="' + w + '" height="' + h + '">'], used = {}, drawn = 0;
      for (var L = 0; L < nl; L++) s.push('<text x="4" y="' + (top + (nl - L) * dy + dy / 2 + 3) + '" font-size="9">L' + L + "</text>");
      for (var i = 0; i < Math.min(k, E.length); i++) {
        var u = E[i][0], v = d.owner[E[i][1]], sc = E[i][2];
        if (focus !== null && u !== focus && v !== focus) continue;
        used[u] = used[v] = 1;
        drawn++;
        s.push('<line class="wb-edge" x1="' + X(u) + '" y1="' + Y(u) + '" x2="' + X(v) + '" y2="' + Y(v) + '" stroke="' +
               (sc >= 0 ? "#b2182b" : "#2166ac") + '" stroke-width="' + (0.5 + 3.5 * Math.abs(sc) / smax).toFixed(2) +
               '" data-tip="' + esc(nodes[u][0] + " \u2192 " + d.inputs[E[i][1]] + ": " + fmt(sc)) + '"/>');
      }
      nodes.forEach(function (nd, n) {
        var on = used[n] ? 1 : 0;
        s.push('<circle class="wb-node' + (n === focus ? " wb-focus" : "") + '" data-node="' + n + '" cx="' + X(n) + '" cy="' + Y(n) +
               '" r="' + (on ? 4.5 : 2.5) + '" fill="' + (n === focus ? "#fdb863" : on ? "#fff" : "#ddd") +
               '" stroke="' + (on ? "#333" : "#bbb") + '" data-tip="' + esc(nd[0]) + '"/>');
      });
      s.push("</svg>");
      holder.innerHTML = s.join("");
      root.setAttribute("data-drawn", drawn);
      if (window.performance) root.setAttribute("data-draw-ms", (performance.now() - start).toFixed(1));
      controls.querySelector(".wb-count").textContent = drawn + " drawn of the top " + Math.min(k, E.length) + " by |score| (" +
        E.length + " embedded of " + d.n_total + ")" + (focus === null ? "" : "; only edges of " + nodes[focus][0]);
    }
    slider.addEventListener("input", draw);
    holder.addEventListener("click", function (e) {
      var el = e.target.closest(".wb-node");
      var n = el ? +el.getAttribute("data-node") : null;
      focus = (n === focus) ? null : n;
      draw();
    });
    controls.querySelector(".wb-reset").addEventListener("click", function () { focus = null; draw(); });
    draw();
  }

  function scorecard(root, d) {
    var COL = {"replicated": "#1a9850", "at chance": "#a6a23a", "below the paper's bar": "#f46d43",
               "not replicated": "#d73027", "inconclusive": "#888", "not measured": "#7b5ea7"};
    var lo = d.range[0], hi = d.range[1], span = (hi - lo) || 1;
    function px(v) { return (8 + 144 * (v - lo) / span).toFixed(1); }
    var verdicts = [];
    d.rows.forEach(function (r) { if (verdicts.indexOf(r.verdict) < 0) verdicts.push(r.verdict); });
    var cols = [["claim", "claim"], ["value", "value"], ["ci_low", "95% interval"], ["threshold", "threshold"],
                ["verdict", "verdict"], ["null_percentile", "null pct"]];
    root.insertAdjacentHTML("beforeend", '<div class="wb-title">' + esc(d.title) + '</div><div class="wb-controls">verdict ' +
      '<select class="wb-filter"><option value="">all</option>' + verdicts.map(function (v) {
        return '<option value="' + esc(v) + '">' + esc(v) + "</option>"; }).join("") + '</select></div>' +
      '<table class="wb-table"><thead><tr>' + cols.map(function (c) {
        return '<th data-key="' + c[0] + '">' + c[1] + "</th>"; }).join("") + "</tr></thead><tbody></tbody></table>");
    var body = root.querySelector("tbody"), sel = root.querySelector(".wb-filter"), key = null, dir = 1;
    function row(r) {
      var c = COL[r.verdict] || "#888", svg = "";
      if (r.value !== null) {
        svg = '<svg width="160" height="14">' + (r.ci_low !== null ? '<line x1="' + px(r.ci_low) + '" x2="' + px(r.ci_high) +
          '" y1="7" y2="7" stroke="' + c + '" stroke-width="2"/>' : "") + '<circle cx="' + px(r.value) + '" cy="7" r="3" fill="' + c +
          '"/><line x1="' + px(r.threshold) + '" x2="' + px(r.threshold) + '" y1="1" y2="13" stroke="#000"/></svg>';
      }
      return '<tr data-verdict="' + esc(r.verdict) + '" data-tip="' + esc(r.claim + ": " + r.statement) + '"><td>' + esc(r.claim) +
        "</td><td>" + fmt(r.value) + '</td><td class="wb-interval" data-tip="' +
        esc(fmt(r.value) + " [" + fmt(r.ci_low) + ", " + fmt(r.ci_high) + "] vs threshold " + fmt(r.threshold)) + '">' + svg +
        " [" + fmt(r.ci_low) + ", " + fmt(r.ci_high) + "]</td><td>" + fmt(r.threshold) + ' <small>(' + esc(r.direction) +
        ')</small></td><td style="color:' + c + '">' + esc(r.verdict) + "</td><td>" +
        (r.null_percentile === null ? "-" : fmt(r.null_percentile)) + "</td></tr>";
    }
    function draw() {
      var rows = d.rows.filter(function (r) { return !sel.value || r.verdict === sel.value; });
      if (key) rows = rows.slice().sort(function (a, b) {
        var x = a[key], y = b[key];
        if (x === y) return 0;
        if (x === null) return 1;
        if (y === null) return -1;
        return (x < y ? -1 : 1) * dir;
      });
      body.innerHTML = rows.map(row).join("");
      root.setAttribute("data-rows", rows.length);
    }
    root.querySelector("thead").addEventListener("click", function (e) {
      var th = e.target.closest("th");
      if (!th) return;
      var k = th.getAttribute("data-key");
      dir = (k === key) ? -dir : 1;
      key = k;
      draw();
    });
    sel.addEventListener("change", draw);
    draw();
  }

  var KINDS = {heatmap: heatmap, attention: attention, graph: graph, scorecard: scorecard};

  /* Draw the view whose container precedes `script` (or has id `id`). */
  function boot(id, script) {
    var root = script && script.previousElementSibling;
    if (!root || !root.classList || !root.classList.contains("wb-view")) root = document.getElementById(id);
    if (!root || root.getAttribute("data-ready")) return;
    var data = JSON.parse(root.querySelector("script.wb-data").textContent);
    var placeholder = root.querySelector(".wb-placeholder");
    if (placeholder) placeholder.remove();
    var start = window.performance ? performance.now() : 0;
    tooltips(root);
    KINDS[data.kind](root, data);
    if (window.performance) root.setAttribute("data-render-ms", (performance.now() - start).toFixed(1));
    root.setAttribute("data-ready", "1");
  }

  window.wbViews = {boot: boot, kinds: KINDS};
})();
