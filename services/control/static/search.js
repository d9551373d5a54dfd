/* /search: text or picture queries against one or two gallery indexes, shown side by side.
   The query lives in the address (?q=&a=&b=&k=) so a comparison can be linked and reloaded. */
(function () {
  "use strict";
  var F = window.Fmt;
  function $(id) { return document.getElementById(id); }

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function fail(response) {
    return response.json().then(function (body) {
      var detail = body && body.detail;
      throw new Error(typeof detail === "string" ? detail : response.status + " " + response.statusText);
    }, function () { throw new Error(response.status + " " + response.statusText); });
  }

  function getJSON(url, options) {
    return fetch(url, Object.assign({credentials: "same-origin"}, options || {})).then(function (r) {
      return r.ok ? r.json() : fail(r);
    });
  }

  function chosen() {
    return [$("index-a").value, $("index-b").value].filter(function (name, i, all) {
      return name && all.indexOf(name) === i;
    });
  }

  function column(name, answer, error) {
    var box = el("section", "search-column");
    box.dataset.index = name;
    var head = el("h3", null, name);
    if (answer) { head.appendChild(el("span", "muted", " \u00b7 " + answer.results.length + " results in " + F.num(answer.took_ms) + " ms")); }
    box.appendChild(head);
    if (error) { box.appendChild(el("p", "reason", error)); return box; }
    var grid = el("div", "thumb-grid");
    answer.results.forEach(function (hit, rank) {
      var cell = el("figure", "thumb");
      cell.dataset.id = String(hit.id);
      var img = el("img");
      img.src = hit.thumbnail;
      img.alt = "image " + hit.id;
      img.loading = "lazy";
      cell.appendChild(img);
      var cap = el("figcaption");
      cap.appendChild(el("b", null, "#" + (rank + 1)));
      cap.appendChild(el("span", "score", F.num(hit.score)));
      cap.appendChild(el("span", "muted", "id " + hit.id));
      cell.appendChild(cap);
      grid.appendChild(cell);
    });
    box.appendChild(grid);
    return box;
  }

  function show(names, request) {
    var results = $("results");
    $("search-message").textContent = "";
    results.textContent = "";
    results.className = "search-columns columns-" + names.length;
    var done = names.map(function (name) {
      return request(name).then(function (answer) { return column(name, answer); },
                                function (err) { return column(name, null, err.message); });
    });
    return Promise.all(done).then(function (columns) {
      columns.forEach(function (c) { results.appendChild(c); });
      results.dataset.state = "done";
    });
  }

  function searchText(push) {
    var q = $("q").value.trim(), k = $("k").value, names = chosen();
    if (!q) { $("search-message").textContent = "Type something to search for."; return; }
    if (!names.length) { $("search-message").textContent = "No index to search: build one with cnclip index."; return; }
    if (push) {
      var params = new URLSearchParams({q: q, a: names[0], k: k});
      if (names[1]) { params.set("b", names[1]); }
      history.replaceState(null, "", "/search?" + params.toString());
    }
    return show(names, function (name) {
      return getJSON("/api/search?" + new URLSearchParams({index: name, q: q, k: k}).toString());
    });
  }

  function searchPicture(file) {
    var names = chosen(), k = $("k").value;
    if (!file || !names.length) { return; }
    return show(names, function (name) {
      return getJSON("/api/search/image?" + new URLSearchParams({index: name, k: k}).toString(),
                     {method: "POST", body: file, headers: {"Content-Type": file.type || "application/octet-stream"}});
    });
  }

  function fill(select, indexes, wanted, blank) {
    indexes.forEach(function (ix) {
      var option = el("option", null, ix.name + (ix.error ? " (unreadable)" : " \u00b7 " + ix.count + " images"));
      option.value = ix.name;
      select.appendChild(option);
    });
    if (wanted) { select.value = wanted; } else if (!blank && indexes.length) { select.value = indexes[0].name; }
  }

  function start() {
    var params = new URLSearchParams(location.search);
    if (params.get("q")) { $("q").value = params.get("q"); }
    if (params.get("k")) { $("k").value = params.get("k"); }
    $("search-form").addEventListener("submit", function (ev) { ev.preventDefault(); searchText(true); });
    $("picture").addEventListener("change", function () { searchPicture($("picture").files[0]); });
    getJSON("/api/search/indexes").then(function (body) {
      fill($("index-a"), body.indexes, params.get("a"), false);
      fill($("index-b"), body.indexes, params.get("b"), true);
      document.body.dataset.indexes = String(body.indexes.length);
      if (params.get("q")) { searchText(false); }
    }, function (err) {
      $("search-message").textContent = err.message;
    });
  }

  start();
})();
