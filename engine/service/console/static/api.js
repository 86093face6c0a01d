// The API client: the credential lives in this tab's sessionStorage and goes out as the
// Authorization header (Tenant-Auth key or Bearer JWT) on every call.

const STORAGE_KEY = "vipe.authorization";

export class ApiError extends Error {
  constructor(status, message, errors) {
    super(message);
    this.status = status;
    this.errors = errors || [];
  }
}

/** The Authorization header value for what the user typed: a JWT (three dot-separated parts)
 * is a Bearer token, anything else a Tenant-Auth management key; an explicit scheme is kept. */
export function authorizationFor(text) {
  const value = text.trim();
  if (/^(Bearer|Tenant-Auth)\s+\S/i.test(value)) return value;
  if (/^[\w-]+\.[\w-]+\.[\w-]+$/.test(value)) return `Bearer ${value}`;
  return `Tenant-Auth ${value}`;
}

export function authorization() {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function setAuthorization(value) {
  if (value) sessionStorage.setItem(STORAGE_KEY, value);
  else sessionStorage.removeItem(STORAGE_KEY);
}

/** fetch() with the credential; JSON in and out. Throws ApiError with the API's Message. */
export async function api(path, { method = "GET", json, auth, signal, raw = false } = {}) {
  const headers = { Accept: "application/json" };
  const credential = auth || authorization();
  if (credential) headers.Authorization = credential;
  const init = { method, headers, signal, cache: "no-store" };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = typeof json === "string" ? json : JSON.stringify(json);
  }
  const answer = await fetch(path, init);
  if (raw && answer.ok) return answer;
  let body = null;
  const type = answer.headers.get("content-type") || "";
  if (type.includes("json")) body = await answer.json().catch(() => null);
  if (!answer.ok) {
    const message = (body && body.Message) || `${answer.status} ${answer.statusText}`;
    throw new ApiError(answer.status, message, body && body.Errors);
  }
  return body;
}

/** A file of the job's published output, as a Response (for bytes or blobs). */
export function outputFile(jobId, name, signal) {
  const path = `/Job/${encodeURIComponent(jobId)}/output/${name.split("/").map(encodeURIComponent).join("/")}`;
  return api(path, { raw: true, signal });
}
