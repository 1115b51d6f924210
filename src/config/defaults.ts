/**
 * Defaults with their units in their names. Image calls are slow: OpenAI documents up to
 * several minutes for a high-quality gpt-image answer, and its SDKs wait 10 minutes per attempt.
 */
export const DEFAULT_HOST = '127.0.0.1'
export const DEFAULT_PORT = 8080
/** On SIGTERM, how long in-flight image calls (minutes-long ones included) may run before being cut. */
export const DEFAULT_SHUTDOWN_GRACE_MS = 120_000
/**
 * From a connection's (or a keep-alive request's) first byte to the end of its request headers.
 * Real clients send headers in one packet; this stops a client trickling them (slowloris).
 */
export const DEFAULT_CLIENT_HEADERS_TIMEOUT_MS = 15_000
/**
 * An idle keep-alive connection is closed after this. Above the 60 s idle timeout of common load
 * balancers, so that the gateway is not the side closing a connection the balancer is reusing.
 */
export const DEFAULT_KEEP_ALIVE_TIMEOUT_MS = 72_000
/**
 * A deadline for receiving a whole request, headers and body; 0 is off. Off by default: it would
 * cut a large upload arriving slowly but steadily; stalled bodies are stopped by `limits.uploadIdleMs`.
 */
export const DEFAULT_CLIENT_REQUEST_TIMEOUT_MS = 0
/**
 * Image requests in flight on one instance (uploading, waiting for the upstream, or answering);
 * past it new ones get 503 server_busy at once. Streaming keeps each one small in memory, so the
 * cap is about sockets and upstream connections: well above providers' maxConnections combined.
 */
export const DEFAULT_MAX_IN_FLIGHT = 1024
/** fastify's bodyLimit outside the image routes (which set their own): admin bodies are a few hundred bytes. */
export const SMALL_BODY_LIMIT_BYTES = 64 * 1024

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
/** Deployments tried for one request (the first included) before the last failure goes to the client. */
export const DEFAULT_MAX_ATTEMPTS = 3
/** No failover attempt starts after this: connect timeouts alone could otherwise add up to minutes. */
export const DEFAULT_MAX_TOTAL_MS = 60_000
/** Multipart uploads up to this size are kept (memory, then a temporary file) so another deployment can get them. */
export const DEFAULT_REPLAY_BODY_BYTES = 64 * 1024 * 1024
/** A retry-after up to this long is waited out when no other deployment is left. */
export const DEFAULT_MAX_RETRY_WAIT_MS = 5_000
/** Failures in a row that put a deployment in cooldown. */
export const DEFAULT_COOLDOWN_FAILURES = 3
/** The first cooldown; it doubles with each failed probe. */
export const DEFAULT_COOLDOWN_BASE_MS = 10_000
export const DEFAULT_COOLDOWN_MAX_MS = 5 * 60_000
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

/**
 * An Idempotency-Key's outcome is kept this long: a repeat within it gets the stored answer (or is
 * refused), never a second run. 24 hours, as Stripe and the IETF idempotency-key draft's examples use.
 */
export const DEFAULT_IDEMPOTENCY_TTL_MS = 24 * 60 * 60_000
/** The largest answer kept for replay; GPT image answers carry base64 images of several MB each. */
export const DEFAULT_IDEMPOTENCY_MAX_STORED_BYTES = 32 * 1024 * 1024
/**
 * How long a repeat waits for the first request with its key to finish before a 409. Under the
 * 60 s idle timeout of common load balancers; the SDKs retry the 409 (after `retry-after`), and
 * wait here again, so three tries of the SDK cover about 90 s of generation.
 */
export const DEFAULT_IDEMPOTENCY_WAIT_MS = 30_000

/** Hosted image links last as long as OpenAI's own (60 minutes); then the image is deleted. */
export const DEFAULT_IMAGE_LINK_TTL_MS = 60 * 60_000
/** Where the directory image store keeps images, relative to the working directory. */
export const DEFAULT_IMAGE_DIRECTORY = 'data/images'
/** An answer read whole to host its images (10 GPT images are about 40 MB of base64). */
export const DEFAULT_IMAGE_ANSWER_BYTES = 256 * 1024 * 1024
/** The largest image fetched from an upstream's URL (to re-host it, or to inline it as base64). */
export const DEFAULT_IMAGE_FETCH_BYTES = 64 * 1024 * 1024
export const DEFAULT_IMAGE_FETCH_TIMEOUT_MS = 30_000
