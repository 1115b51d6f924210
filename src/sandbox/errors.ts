import { GatewayError, type OpenAIErrorBody } from '../errors/catalogue.js'
import { InputImageError } from './render.js'

/**
 * The sandbox's errors in OpenAI's envelope (spec §7.1). Its checks are the gateway's own
 * (validateFields throws GatewayError), plus the few only the sandbox can make: decoding images
 * and data: URLs. Anything else that goes wrong is a 500 with OpenAI's generic message.
 */

export class SandboxError extends Error {
  readonly status: number
  readonly type: string
  readonly code: string | null
  readonly param: string | null

  constructor(status: number, message: string, options: { code?: string | null; param?: string | null; type?: string } = {}) {
    super(message)
    this.name = 'SandboxError'
    this.status = status
    this.type = options.type ?? (status < 500 ? 'invalid_request_error' : 'server_error')
    this.code = options.code ?? null
    this.param = options.param ?? null
  }

  toBody(): OpenAIErrorBody {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } }
  }
}

export function invalidRequest(code: string, message: string, param: string | null): SandboxError {
  return new SandboxError(400, message, { code, param })
}

export function missingParameter(param: string): SandboxError {
  return invalidRequest('missing_required_parameter', `Missing required parameter: '${param}'.`, param)
}

/** What fastify and @fastify/multipart throw for bodies they cannot read, by their error code. */
const BODY_ERRORS: Readonly<Record<string, { status: number; code: string; message: string }>> = {
  FST_ERR_CTP_BODY_TOO_LARGE: { status: 413, code: 'request_too_large', message: 'Request Entity Too Large' },
  FST_REQ_FILE_TOO_LARGE: { status: 413, code: 'request_too_large', message: 'A file is over the 50 MB the sandbox takes.' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { status: 400, code: 'invalid_json', message: 'The JSON body is empty.' },
  FST_ERR_CTP_INVALID_JSON_BODY: { status: 400, code: 'invalid_json', message: 'We could not parse the JSON body of your request.' },
  FST_ERR_CTP_INVALID_MEDIA_TYPE: {
    status: 400,
    code: 'unsupported_content_type',
    message: 'Unsupported Content-Type: generations take application/json; edits multipart/form-data or application/json; variations multipart/form-data.'
  },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { status: 400, code: 'invalid_request', message: 'The Content-Length does not match the body.' },
  FST_PARTS_LIMIT: { status: 400, code: 'invalid_multipart', message: 'The multipart body has too many parts.' },
  FST_FILES_LIMIT: { status: 400, code: 'too_many_images', message: 'The multipart body has more files than the sandbox takes (16 images and a mask).' },
  FST_FIELDS_LIMIT: { status: 400, code: 'invalid_multipart', message: 'The multipart body has too many fields.' },
  FST_PROTO_VIOLATION: { status: 400, code: 'invalid_multipart', message: 'A multipart field name is not allowed.' },
  FST_MP_PREMATURE_CLOSE: { status: 400, code: 'invalid_multipart', message: 'The multipart body ended before its closing boundary.' }
}

function errorCode(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null || !('code' in err)) return undefined
  return typeof err.code === 'string' ? err.code : undefined
}

/** @fastify/busboy's own parse failures carry no code, only these messages ("Part terminated early due to …" on a file part). */
function isMultipartParseError(err: unknown): boolean {
  return err instanceof Error && /(unexpected end of multipart data|^Multipart: Boundary not found)/i.test(err.message)
}

export function toSandboxError(err: unknown): SandboxError {
  if (err instanceof SandboxError) return err
  if (err instanceof GatewayError) return new SandboxError(err.status, err.message, { code: err.code, param: err.param, type: err.type })
  if (err instanceof InputImageError) {
    return invalidRequest('invalid_image', `Invalid image file for '${err.role}': it could not be decoded as PNG, JPEG or WebP.`, err.role)
  }
  const known = BODY_ERRORS[errorCode(err) ?? '']
  if (known !== undefined) {
    return new SandboxError(known.status, known.message, { code: known.code })
  }
  if (isMultipartParseError(err)) {
    return invalidRequest('invalid_multipart', `The multipart body could not be read (${(err as Error).message}).`, null)
  }
  return new SandboxError(500, 'The server had an error while processing your request. Sorry about that!')
}
