// Hash routes: "#/runs/<id>?tab=x" -> a view. A view is `(params, query, root) => dispose?`;
// the dispose function closes what the view opened (live streams) when the route changes.

export class Router {
  constructor(root) {
    this.root = root;
    this.routes = [];
    this.dispose = null;
    window.addEventListener("hashchange", () => this.render());
    // Close the view's live streams when the page goes away (reload, another URL): a stream left to the
    // browser to drop can hold one of its six connections to the server for most of a minute.
    window.addEventListener("pagehide", () => {
      this.dispose?.();
      this.dispose = null;
    });
  }

  /** route("/runs/:id", view) */
  route(pattern, view) {
    const names = [];
    const source = pattern.replace(/:(\w+)/g, (_, name) => {
      names.push(name);
      return "([^/]+)";
    });
    this.routes.push({ regex: new RegExp(`^${source}$`), names, view });
    return this;
  }

  render() {
    const hash = location.hash.replace(/^#/, "") || "/";
    const [path, search] = hash.split("?");
    const query = new URLSearchParams(search || "");
    for (const { regex, names, view } of this.routes) {
      const match = regex.exec(path);
      if (!match) continue;
      const params = Object.fromEntries(names.map((name, i) => [name, decodeURIComponent(match[i + 1])]));
      if (this.dispose) this.dispose();
      this.root.replaceChildren();
      this.dispose = view(params, query, this.root) || null;
      document.querySelectorAll("nav a").forEach((a) => {
        a.classList.toggle("active", path === a.dataset.path || path.startsWith(a.dataset.path + "/"));
      });
      return;
    }
    this.root.textContent = `no page at ${path}`;
  }
}

/** Change the query of the current route without adding a history entry or re-rendering. */
export function setQuery(query) {
  const [path] = location.hash.replace(/^#/, "").split("?");
  const text = query.toString();
  history.replaceState(null, "", `#${path || "/"}${text ? "?" + text : ""}`);
}
