/**
 * Defaults with their units in their names. Image calls are slow: OpenAI documents up to
 * several minutes for a high-quality gpt-image answer, and its SDKs wait 10 minutes per attempt.
 */
export const DEFAULT_HOST = '127.0.0.1'
export const DEFAULT_PORT = 8080
/** On SIGTERM, how long in-flight image calls (minutes-long ones included) may run before being cut. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 120_000

/** TCP + TLS setup to an upstream. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000
/** From the end of the upload to the upstream's status line: an image answer comes only when the image is done. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 360_000
/** Longest silence between two answer chunks (a streamed answer's partial images can be tens of seconds apart). */
export const DEFAULT_BODY_IDLE_TIMEOUT_MS = 180_000
/** Connections kept per upstream provider, so one stuck upstream cannot take every socket. */
export const DEFAULT_MAX_CONNECTIONS = 256

/** A generations body: a 32,000-character prompt escaped as \uXXXX is under 200 KB. */
export const DEFAULT_JSON_BODY_BYTES = 1024 * 1024
/** The JSON form of edits carries images as data: URLs, so it is held whole; multipart is the streaming form. */
export const DEFAULT_JSON_EDIT_BODY_BYTES = 64 * 1024 * 1024
/** Whole multipart body. OpenAI's own ceiling is 16 images of 50 MB; operators lower this to what they serve. */
export const DEFAULT_MULTIPART_BODY_BYTES = 16 * 50 * 1024 * 1024 + 1024 * 1024
/** Bytes of an upload held in memory while the model is not yet known; past this they go to a temporary file. */
export const DEFAULT_HOLD_MEMORY_BYTES = 1024 * 1024
/** An upload that sends nothing for this long is failed with 408 (a slow but moving client is fine). */
export const DEFAULT_UPLOAD_IDLE_MS = 60_000
/** Upstream error bodies are read whole (to reshape them); larger ones are cut. */
export const MAX_UPSTREAM_ERROR_BODY_BYTES = 64 * 1024

/** A found key is trusted this long without asking the store again (revocations clear it at once). */
export const DEFAULT_KEY_CACHE_TTL_MS = 5_000
/** "No such key" is remembered this long, so random keys cannot flood the store. */
export const DEFAULT_KEY_NEGATIVE_CACHE_TTL_MS = 2_000
/** While Redis is unreachable, a cached key keeps working this long past its ttl. */
export const DEFAULT_KEY_STALE_MS = 60_000
/** A concurrency slot or budget reservation that is never released (a crashed instance) lapses after this. */
export const DEFAULT_LEASE_MS = 15 * 60_000
