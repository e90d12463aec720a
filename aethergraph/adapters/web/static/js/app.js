// The viewer's entry point: the routes, and the API token box shown when the server asks for one.

import { getToken, setToken } from "./api.js";
import { graphsPage } from "./graphs.js";
import { inboxPage } from "./inbox.js";
import { Router } from "./router.js";
import { runPage } from "./run.js";
import { runsPage } from "./runs.js";

const token = document.getElementById("token");
token.value = getToken();
token.addEventListener("change", () => {
  setToken(token.value.trim());
  router.render();
});

const router = new Router(document.getElementById("app"))
  .route("/", runsPage)
  .route("/runs/:id", runPage)
  .route("/inbox", inboxPage)
  .route("/graphs", graphsPage);
router.render();
