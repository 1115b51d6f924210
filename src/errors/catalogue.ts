/**
 * Every error the gateway itself answers with. Each has a stable wire `code` (the `code` of
 * OpenAI's envelope), an HTTP status and OpenAI's error `type`. Statuses decide whether the SDKs
 * retry (408, 409, 429 and 5xx), so anything a retry cannot fix is a 4xx.
 * docs/errors.md lists the same table; test/unit/errors.test.ts keeps the two in step.
 */
export type OpenAIErrorType = 'invalid_request_error' | 'server_error' | 'requests' | 'insufficient_quota'

export interface OpenAIErrorBody {
  error: { message: string; type: string; param: string | null; code: string | null }
}

interface Entry {
  status: number
  type: OpenAIErrorType
  /** One line for docs/errors.md. */
  when: string
}

export const CATALOGUE = {
  invalid_json: { status: 400, type: 'invalid_request_error', when: 'the body is not valid JSON, or is nested more than 64 levels deep' },
  unsupported_content_type: {
    status: 400,
    type: 'invalid_request_error',
    when: 'the Content-Type is not one the endpoint takes'
  },
  unsupported_content_encoding: {
    status: 415,
    type: 'invalid_request_error',
    when: 'an image request body has a Content-Encoding (gzip, say): bodies are taken uncompressed only (accept-encoding: identity)'
  },
  invalid_multipart: {
    status: 400,
    type: 'invalid_request_error',
    when: 'a multipart body is malformed or ends before its closing boundary'
  },
  missing_required_parameter: { status: 400, type: 'invalid_request_error', when: 'a required field is absent' },
  invalid_type: { status: 400, type: 'invalid_request_error', when: 'a field has the wrong type' },
  invalid_value: {
    status: 400,
    type: 'invalid_request_error',
    when: 'a field has a value the model does not take'
  },
  integer_below_min_value: { status: 400, type: 'invalid_request_error', when: 'an integer field is too small' },
  integer_above_max_value: { status: 400, type: 'invalid_request_error', when: 'an integer field is too large' },
  string_above_max_length: { status: 400, type: 'invalid_request_error', when: 'the prompt is too long for the model' },
  unknown_parameter: {
    status: 400,
    type: 'invalid_request_error',
    when: 'a field the model rejects (response_format with a GPT image model)'
  },
  invalid_image_format: {
    status: 400,
    type: 'invalid_request_error',
    when: 'a file is not PNG, JPEG or WebP (by its bytes), or not the format the model needs'
  },
  invalid_image_dimensions: {
    status: 400,
    type: 'invalid_request_error',
    when: 'dall-e-2 image not square, or mask not the size of the image'
  },
  image_too_large: { status: 400, type: 'invalid_request_error', when: 'a file is over the model\'s per-file size' },
  too_many_images: { status: 400, type: 'invalid_request_error', when: 'more files than the model takes' },
  request_timeout: {
    status: 408,
    type: 'invalid_request_error',
    when: 'a request body (multipart or JSON) stalled: nothing arrived for limits.uploadIdleMs; or the headers did not arrive within server.headersTimeoutMs (the request within server.requestTimeoutMs, when set)'
  },
  request_too_large: { status: 413, type: 'invalid_request_error', when: 'the body is over the gateway\'s cap, or a form has more than 100 parts or 1 MiB of text fields' },
  invalid_api_key: {
    status: 401,
    type: 'invalid_request_error',
    when: 'no gateway key, or one that is malformed, unknown, revoked, disabled or expired'
  },
  model_not_allowed: { status: 403, type: 'invalid_request_error', when: 'the key may not use this model' },
  invalid_admin_token: { status: 401, type: 'invalid_request_error', when: 'the admin API was called without the admin token' },
  key_not_found: { status: 404, type: 'invalid_request_error', when: 'the admin API was asked for a key id that does not exist' },
  rate_limit_exceeded: {
    status: 429,
    type: 'requests',
    when: 'the key is over its requests per minute, images per minute or concurrent requests (see retry-after)'
  },
  insufficient_quota: {
    status: 429,
    type: 'insufficient_quota',
    when: 'the key\'s budget cannot cover this request (x-should-retry: false)'
  },
  model_not_found: { status: 404, type: 'invalid_request_error', when: 'the model is not configured on this gateway' },
  endpoint_not_supported: {
    status: 400,
    type: 'invalid_request_error',
    when: 'no deployment of the model serves this endpoint (variations on Azure, say)'
  },
  invalid_idempotency_key: {
    status: 400,
    type: 'invalid_request_error',
    when: 'the Idempotency-Key header is empty, longer than 255 characters, or not printable ASCII'
  },
  idempotency_key_reused: {
    status: 422,
    type: 'invalid_request_error',
    when: 'the Idempotency-Key was used with a different request (body, model or form) to the same endpoint within idempotency.ttlMs'
  },
  idempotency_in_progress: {
    status: 409,
    type: 'invalid_request_error',
    when: 'the first request with this Idempotency-Key is still running after idempotency.waitMs (retry-after: 1; the SDKs retry)'
  },
  idempotency_answer_not_stored: {
    status: 409,
    type: 'invalid_request_error',
    when: 'a request with this Idempotency-Key already ran but its answer was not kept (too large, an event stream, cut off, or its outcome unknown); it is not run twice (x-should-retry: false)'
  },
  unknown_url: { status: 404, type: 'invalid_request_error', when: 'no such route' },
  image_link_invalid: {
    status: 404,
    type: 'invalid_request_error',
    when: 'a hosted image link with a wrong or missing signature, or whose image is no longer kept'
  },
  image_store_unavailable: { status: 503, type: 'server_error', when: 'a hosted image link could not be served: its store (directory or Redis) failed' },
  image_link_expired: { status: 410, type: 'invalid_request_error', when: 'a hosted image link past its expiry (images.ttlMs)' },
  service_unavailable: {
    status: 503,
    type: 'server_error',
    when: 'the key store (Redis) cannot be reached and the key is not in the cache, or a request\'s Idempotency-Key cannot be checked'
  },
  server_busy: {
    status: 503,
    type: 'server_error',
    when: 'this instance already has server.maxInFlight image requests in flight (retry-after: 1; the SDKs retry)'
  },
  server_shutting_down: {
    status: 503,
    type: 'server_error',
    when: 'this instance is shutting down: a request that still arrived on an open connection during the drain is refused before any work (connection: close, x-should-retry: true; the SDKs retry)'
  },
  upstream_unreachable: {
    status: 502,
    type: 'server_error',
    when: 'the upstream refused, reset or dropped the connection'
  },
  upstream_credentials_rejected: {
    status: 502,
    type: 'server_error',
    when: 'the upstream refused the gateway\'s own provider credentials (HTTP 401 upstream)'
  },
  upstream_error: {
    status: 502,
    type: 'server_error',
    when: 'the upstream answered an error status with no OpenAI error body (the upstream\'s status is kept)'
  },
  upstream_bad_response: { status: 502, type: 'server_error', when: 'the upstream answered with something unusable' },
  image_hosting_failed: {
    status: 502,
    type: 'server_error',
    when: 'an image in the upstream\'s answer could not be hosted or inlined: its URL failed, redirected, was over images.fetchMaxBytes or slower than images.fetchTimeoutMs, or the store failed (x-should-retry: false: the upstream made it)'
  },
  upstream_timeout: { status: 504, type: 'server_error', when: 'the upstream took longer than its configured timeout' },
  internal_error: { status: 500, type: 'server_error', when: 'a bug in the gateway (details only in its log)' }
} as const satisfies Record<string, Entry>

export type ErrorCode = keyof typeof CATALOGUE

export class GatewayError extends Error {
  readonly code: ErrorCode
  readonly status: number
  readonly type: OpenAIErrorType
  readonly param: string | null
  /** Extra answer headers, e.g. x-should-retry. */
  readonly headers: Readonly<Record<string, string>>

  constructor(
    code: ErrorCode,
    message: string,
    options: {
      param?: string | null
      cause?: unknown
      headers?: Record<string, string>
      /** Only for errors that relay an upstream's own status. */
      status?: number
    } = {}
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause })
    this.name = 'GatewayError'
    this.code = code
    this.status = options.status ?? CATALOGUE[code].status
    // A relayed upstream status picks the type by its class; otherwise the catalogue's.
    this.type =
      options.status === undefined ? CATALOGUE[code].type : options.status < 500 ? 'invalid_request_error' : 'server_error'
    this.param = options.param ?? null
    this.headers = options.headers ?? {}
  }

  toBody(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } }
  }
}
