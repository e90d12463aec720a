// A form generated from a JSON Schema: strings, numbers, integers, booleans, enums, arrays of those,
// nested objects, required fields, defaults. What the form cannot express (anyOf, $ref, ...) becomes a
// JSON text field (text that is not JSON is taken as a string). The browser checks types and required
// fields; everything else (minimum, pattern, ...) is the server's to check against the wait's schema,
// and its rejection message is shown.

import { h } from "./dom.js";

let counter = 0;
const uid = (hint) => `f${++counter}-${String(hint).replace(/[^\w-]/g, "_")}`;

export class FieldError extends Error {
  constructor(path, message) {
    super(`${path || "the answer"}: ${message}`);
    this.path = path;
  }
}

function mainType(schema) {
  if (schema.enum) return "enum";
  if (schema.const !== undefined) return "const";
  const t = schema.type;
  if (Array.isArray(t)) return t.find((x) => x !== "null") || "null";
  if (t) return t;
  if (schema.properties) return "object";
  if (schema.items) return "array";
  return "json";
}

const SIMPLE = new Set(["string", "number", "integer", "boolean", "enum"]);

/** A field for `schema` at `path`: {el, read() -> value | undefined (left empty)}. */
function field(schema, path, { label, required }) {
  const type = mainType(schema);
  const builder = BUILDERS[type] || BUILDERS.json;
  const f = builder(schema, path, required);
  if (type === "object" || type === "const") return f;
  const id = f.input?.id;
  const title = label ?? schema.title ?? "";
  const note = schema.description ? h("span", { class: "hint" }, schema.description) : null;
  f.el = h("div", { class: `field ft-${type}`, "data-path": path },
    title ? h("label", { for: id }, title, required ? h("span", { class: "req", title: "required" }, " *") : null) : null,
    f.el, note);
  return f;
}

function parseNumber(text, path, integer) {
  const value = Number(text);
  if (text.trim() === "" || !Number.isFinite(value)) throw new FieldError(path, "expected a number");
  if (integer && !Number.isInteger(value)) throw new FieldError(path, "expected a whole number");
  return value;
}

const BUILDERS = {
  string(schema, path, required) {
    // A long text (the whole answer of a text wait, or a string allowed beyond 200 characters) gets a text area.
    const long = (path === "" || (schema.maxLength ?? 0) > 200) && !schema.format && !schema.pattern;
    const attrs = { id: uid(path), name: path, required, "data-path": path };
    const input = long ? h("textarea", { ...attrs, rows: 3 }) : h("input", { ...attrs, type: schema.format === "email" ? "email" : "text" });
    if (schema.default !== undefined) input.value = String(schema.default);
    return {
      input,
      el: input,
      read() {
        if (input.value !== "") return input.value;
        if (required) throw new FieldError(path, "required");
        return undefined;
      },
    };
  },
  number(schema, path, required, integer = false) {
    const input = h("input", { id: uid(path), name: path, type: "number", step: integer ? 1 : "any", required, "data-path": path, min: schema.minimum, max: schema.maximum });
    if (schema.default !== undefined) input.value = String(schema.default);
    return {
      input,
      el: input,
      read() {
        if (input.value === "" && input.validity.badInput === false) {
          if (required) throw new FieldError(path, "required");
          return undefined;
        }
        return parseNumber(input.value, path, integer);
      },
    };
  },
  integer(schema, path, required) {
    return BUILDERS.number(schema, path, required, true);
  },
  boolean(schema, path) {
    const input = h("input", { id: uid(path), name: path, type: "checkbox", "data-path": path });
    input.checked = schema.default === true;
    return { input, el: input, read: () => input.checked };
  },
  enum(schema, path, required) {
    const options = schema.enum;
    const input = h("select", { id: uid(path), name: path, "data-path": path },
      h("option", { value: "" }, required ? "choose…" : "—"),
      options.map((option, i) => h("option", { value: String(i) }, typeof option === "string" ? option : JSON.stringify(option))));
    if (schema.default !== undefined) {
      const index = options.findIndex((o) => JSON.stringify(o) === JSON.stringify(schema.default));
      if (index >= 0) input.value = String(index);
    }
    return {
      input,
      el: input,
      read() {
        if (input.value !== "") return options[Number(input.value)];
        if (required && path === "") throw new FieldError(path, "choose one");
        return undefined;
      },
    };
  },
  const(schema) {
    return { el: h("span", { class: "hidden" }), read: () => schema.const };
  },
  null() {
    return { el: h("span", { class: "note" }, "null"), read: () => null };
  },
  array(schema, path, required) {
    const items = schema.items && !Array.isArray(schema.items) ? schema.items : {};
    if (!SIMPLE.has(mainType(items)) && mainType(items) !== "object") return BUILDERS.json(schema, path, required);
    const list = h("div", { class: "array-items" });
    const rows = [];
    const add = () => {
      const f = field(items, `${path}/${rows.length}`, { label: "", required: false });
      const entry = { f, el: null };
      entry.el = h("div", { class: "array-item" }, f.el, h("button", {
        type: "button", class: "small", title: "remove",
        onclick: () => {
          rows.splice(rows.indexOf(entry), 1);
          entry.el.remove();
        },
      }, "×"));
      rows.push(entry);
      list.append(entry.el);
    };
    for (let i = 0; i < (schema.minItems || (Array.isArray(schema.default) ? 0 : 1)); i++) add();
    const el = h("div", { class: "array", id: uid(path), "data-path": path }, list,
      h("button", { type: "button", class: "small add", onclick: add }, "+ add"));
    return {
      input: el,
      el,
      read() {
        const values = rows.map((r) => r.f.read()).filter((v) => v !== undefined);
        if (!values.length && !required) return undefined;
        return values;
      },
    };
  },
  object(schema, path, required) {
    const props = schema.properties || {};
    const need = new Set(schema.required || []);
    const fields = Object.entries(props).map(([name, sub]) => [name, field(sub, path ? `${path}/${name}` : name, { label: sub.title || name, required: need.has(name) })]);
    const extra = schema.additionalProperties && !Object.keys(props).length ? BUILDERS.json({}, path, required) : null;
    const legend = path ? h("legend", {}, schema.title || path.split("/").pop(), required ? h("span", { class: "req" }, " *") : null) : null;
    const el = h(path ? "fieldset" : "div", { class: "object", "data-path": path }, legend, fields.map(([, f]) => f.el), extra?.el);
    return {
      el,
      read() {
        if (extra) return extra.read();
        const value = {};
        for (const [name, f] of fields) {
          const v = f.read();
          if (v === undefined) {
            if (need.has(name)) throw new FieldError(path ? `${path}/${name}` : name, "required");
          } else value[name] = v;
        }
        return !required && path && Object.keys(value).length === 0 ? undefined : value;
      },
    };
  },
  json(schema, path, required) {
    const input = h("textarea", { id: uid(path), name: path, rows: 2, class: "json-input", "data-path": path, placeholder: "JSON (or plain text)" });
    if (schema.default !== undefined) input.value = JSON.stringify(schema.default, null, 2);
    return {
      input,
      el: input,
      read() {
        if (input.value.trim() === "") {
          if (required) throw new FieldError(path, "required (JSON)");
          return undefined;
        }
        try {
          return JSON.parse(input.value);
        } catch {
          return input.value; // not JSON: the text itself, a string
        }
      },
    };
  },
};

/**
 * A form for `schema`. Returns {el, read()}: read() gives the value, or throws FieldError naming the field.
 * A schema that is not an object gets one field labelled `label`.
 */
export function schemaForm(schema, { label = "answer" } = {}) {
  const root = schema && typeof schema === "object" ? schema : {};
  const type = mainType(root);
  const f = type === "object" ? field(root, "", { required: true }) : field(root, "", { label, required: true });
  return { el: h("div", { class: "schema-form" }, f.el), read: () => f.read() };
}

/** Whether a wait should be answered with buttons (an approval: {"approved"} or {"choice": enum}). */
export function approvalChoices(wait) {
  const props = wait.payload_schema?.properties || {};
  if (wait.kind !== "approval" && !(props.approved && Object.keys(props).length <= 2)) return null;
  if (props.choice && Array.isArray(props.choice.enum)) return props.choice.enum.map(String);
  return ["Approve", "Reject"];
}
