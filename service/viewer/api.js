// Calls to the service from the page: the API key (Authorization: Bearer, when filled in) and
// errors reported as the service worded them.

const keyInput = () => document.getElementById("api-key");

/** An error whose message is the service's own, prefixed by the HTTP status. */
export class ServiceError extends Error {
  constructor(status, message) {
    super(`${status}: ${message}`);
    this.status = status;
  }
}

function authHeaders() {
  const key = keyInput().value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function errorOf(response) {
  const text = await response.text();
  let message = text || response.statusText;
  try {
    const body = JSON.parse(text);
    const said = body.error ?? body.detail ?? body.message;
    if (said !== undefined) message = typeof said === "string" ? said : JSON.stringify(said);
  } catch {
    // not JSON: the text as it came
  }
  return new ServiceError(response.status, message);
}

/** multipart/form-data: files under `image` (repeated), the other fields as text. */
function form(files, fields) {
  const data = new FormData();
  for (const file of files) data.append("image", file, file.name);
  for (const [name, value] of Object.entries(fields)) {
    if (value === null || value === undefined || value === "") continue;
    data.append(name, typeof value === "string" ? value : JSON.stringify(value));
  }
  return data;
}

/** POST files and fields to `route`; the Response, or a ServiceError. */
export async function post(route, files, fields = {}) {
  const response = await fetch(route, {
    method: "POST",
    headers: authHeaders(),
    body: form(files, fields),
  });
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function postJson(route, files, fields = {}) {
  return (await post(route, files, fields)).json();
}

export async function getJson(route) {
  const response = await fetch(route, { headers: authHeaders() });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export function rememberKey() {
  const input = keyInput();
  input.value = sessionStorage.getItem("lesionseg-api-key") ?? "";
  input.addEventListener("change", () => {
    sessionStorage.setItem("lesionseg-api-key", input.value.trim());
  });
}
