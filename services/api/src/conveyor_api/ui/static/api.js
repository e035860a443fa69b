// The page's only way to the api: the same /v1 endpoints any client uses,
// with the key a person typed in (kept for this tab only) as a bearer token.

const KEY_STORAGE = "conveyor.apiKey";
// The api sits one level above the page (/ui/ -> /), so a path prefix works too.
const API_ROOT = new URL("../", document.baseURI);

export function apiUrl(path, params) {
  const url = new URL(path.replace(/^\//, ""), API_ROOT);
  for (const [name, value] of params ?? []) url.searchParams.append(name, value);
  return url;
}

export function apiKey() {
  return sessionStorage.getItem(KEY_STORAGE) ?? "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** A failed call: the api's RFC 9457 problem, or one made up for a network failure. */
export class ApiError extends Error {
  constructor(status, problem, retryAfterS = null) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
    this.retryAfterS = retryAfterS;
  }

  get needsKey() {
    return this.status === 401 || this.status === 403;
  }

  static async from(response) {
    let problem = { title: response.statusText || `HTTP ${response.status}`, status: response.status };
    const type = response.headers.get("content-type") ?? "";
    if (type.includes("json")) {
      try {
        problem = { ...problem, ...(await response.json()) };
      } catch {
        // A body that is not JSON after all: keep the status line.
      }
    }
    const retryAfter = Number.parseFloat(response.headers.get("retry-after") ?? "");
    return new ApiError(response.status, problem, Number.isFinite(retryAfter) ? retryAfter : null);
  }

  static unreachable(cause) {
    return new ApiError(0, {
      title: "The api did not answer",
      detail: `${cause?.message ?? cause}. Is it running?`,
    });
  }
}

/** `method path` with a JSON body; the parsed JSON answer, or an ApiError. */
export async function call(method, path, { body, params } = {}) {
  const headers = { Accept: "application/json", ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(apiUrl(path, params), {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
    });
  } catch (err) {
    throw ApiError.unreachable(err);
  }
  if (!response.ok) throw await ApiError.from(response);
  return response.status === 204 ? null : response.json();
}
