// Pair browser. Pair texts are untrusted: everything goes through textContent, never innerHTML.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("pair-data").textContent);
  var colors = JSON.parse(document.getElementById("variant-colors").textContent);
  var PAGE = 50;
  var list = document.getElementById("pair-list");
  var count = document.getElementById("pair-count");
  var more = document.getElementById("more");
  var variantSel = document.getElementById("variant-filter");
  var labelSel = document.getElementById("label-filter");
  var search = document.getElementById("search");
  var matches = [];
  var shown = 0;

  data.pairs.forEach(function (p) {
    p._hay = (data.prompts[p.p] + "\n" + p.chosen + "\n" + p.rejected).toLowerCase();
  });

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function words(s) { var t = s.trim(); return t ? t.split(/\s+/).length : 0; }

  function side(kind, title, text, role) {
    var d = el("div", "side " + kind);
    var h = el("h4", null, title + " ");
    var n = words(text);
    h.appendChild(el("span", "muted", n + (n === 1 ? " word" : " words") + (role ? " · " + role : "")));
    d.appendChild(h);
    d.appendChild(el("pre", "text", text));
    return d;
  }

  function card(p) {
    var c = el("article", "pair");
    c.setAttribute("data-variant", p.v);
    var head = el("div", "pair-head");
    var dot = el("span", "dot");
    dot.style.background = colors[p.v] || "#999";
    head.appendChild(dot);
    head.appendChild(el("span", "vname", p.v === "real" ? "real (human)" : p.v));
    head.appendChild(el("span", "pid", p.id));
    if (p.label) head.appendChild(el("span", "chip " + p.label, "y2 " + p.label));
    p.aspects.forEach(function (a) { head.appendChild(el("span", "chip", a)); });
    c.appendChild(head);

    var prompt = data.prompts[p.p] || "";
    var det = el("details", "prompt");
    det.appendChild(el("summary", null, "Prompt: " + prompt.slice(0, 160).replace(/\s+/g, " ")));
    det.appendChild(el("pre", "text", prompt));
    c.appendChild(det);

    // label "better": y2 is the chosen response; "worse": y2 is the rejected one.
    var chosenRole = p.label ? (p.label === "better" ? "y2" : "y1") : "";
    var rejectedRole = p.label ? (p.label === "better" ? "y1" : "y2") : "";
    var sides = el("div", "sides");
    sides.appendChild(side("chosen", "chosen", p.chosen, chosenRole));
    sides.appendChild(side("rejected", "rejected", p.rejected, rejectedRole));
    c.appendChild(sides);

    if (p.diff) {
      var ins = 0, del = 0;
      p.diff.forEach(function (op) { if (op[0] === "+") ins += words(op[1]); else if (op[0] === "-") del += words(op[1]); });
      var dd = el("details", "diff");
      dd.open = true;
      dd.appendChild(el("summary", null, "word diff y1 → y2: +" + ins + " / −" + del + " words"));
      var pre = el("pre", "text");
      p.diff.forEach(function (op) {
        var tag = op[0] === "+" ? "ins" : op[0] === "-" ? "del" : "span";
        pre.appendChild(el(tag, null, op[1]));
      });
      dd.appendChild(pre);
      c.appendChild(dd);
    }
    return c;
  }

  function showMore() {
    var end = Math.min(matches.length, shown + PAGE);
    var frag = document.createDocumentFragment();
    for (var i = shown; i < end; i++) frag.appendChild(card(matches[i]));
    list.appendChild(frag);
    shown = end;
    more.hidden = shown >= matches.length;
    more.textContent = "show " + Math.min(PAGE, matches.length - shown) + " more";
    count.textContent = "showing " + shown + " of " + matches.length + " matching pairs (" + data.pairs.length + " embedded)";
  }

  function apply() {
    var v = variantSel.value, l = labelSel.value, q = search.value.trim().toLowerCase();
    matches = data.pairs.filter(function (p) {
      return (!v || p.v === v) && (!l || p.label === l) && (!q || p._hay.indexOf(q) >= 0);
    });
    list.textContent = "";
    shown = 0;
    count.dataset.query = q;  // lets a test wait for the filter to have run
    if (!matches.length) list.appendChild(el("div", "empty", "No pair matches."));
    showMore();
  }

  var timer = null;
  variantSel.addEventListener("change", apply);
  labelSel.addEventListener("change", apply);
  search.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(apply, 150); });
  more.addEventListener("click", showMore);
  apply();
})();
