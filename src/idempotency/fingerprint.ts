import { createHash, type Hash } from 'node:crypto'
import type { IncomingMessage } from 'node:http'
import { GatewayError } from '../errors/catalogue.js'
import type { MultipartRelay } from '../multipart/relay.js'
import { MultipartScanner, type PartInfo } from '../multipart/scanner.js'
import type { Endpoint } from '../openai/models.js'

/** 1 to 255 printable ASCII characters (Node has already trimmed the header's outer spaces). */
const IDEMPOTENCY_KEY = /^[\x20-\x7e]{1,255}$/

function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex')
}

/** The request's Idempotency-Key header, checked; null when it has none. */
export function idempotencyKeyOf(headers: IncomingMessage['headers']): string | null {
  const value = headers['idempotency-key']
  if (value === undefined) return null
  if (typeof value !== 'string' || !IDEMPOTENCY_KEY.test(value)) {
    throw new GatewayError('invalid_idempotency_key', 'The Idempotency-Key header must be 1 to 255 printable ASCII characters.')
  }
  return value
}

/**
 * Whose key, for which endpoint: the caller's gateway key id, the endpoint and the
 * Idempotency-Key, as one digest (the client's value never appears in a Redis key name).
 */
export function scopeOf(keyId: string, endpoint: Endpoint, idempotencyKey: string): string {
  return sha256(`${keyId}\n${endpoint}\n${idempotencyKey}`)
}

/** A JSON request is the same request when its bytes are the same. */
export function jsonFingerprint(raw: Buffer): string {
  return `json:${sha256(raw)}`
}

/**
 * A multipart request streams upstream before it has all been read, so before it runs only its
 * model identifies it (its form is checked by FormDigest before a stored answer is replayed).
 */
export function formFingerprint(model: string): string {
  return `form:${sha256(model)}`
}

/**
 * A digest of a multipart form's content, taken on the side as the upload streams: each part's
 * name, filename, content type and bytes, in order. The boundary and the framing are left out,
 * because clients draw a new boundary each time they send a form (the SDKs' retries included).
 */
export class FormDigest {
  private readonly form = createHash('sha256')
  private part: Hash | null = null
  private broken = false
  private ended = false
  private value: string | null = null
  private readonly settled: Promise<string | null>

  constructor(source: IncomingMessage, boundary: string) {
    const scanner = new MultipartScanner(boundary, {
      partStart: (info) => this.partStart(info),
      partData: (data) => this.part?.update(data),
      partEnd: () => this.partEnd(),
      formEnd: () => undefined
    })
    source.on('data', (chunk: Buffer) => {
      if (this.broken) return
      try {
        scanner.write(chunk)
      } catch {
        // The relay's own scanner refuses the upload; there is no form to identify.
        this.broken = true
      }
    })
    this.settled = new Promise((resolve, reject) => {
      source.once('end', () => {
        this.ended = true
        this.value = this.broken || !scanner.complete ? null : this.form.digest('hex')
        resolve(this.value)
      })
      source.once('close', () => {
        if (!this.ended) reject(new Error('the upload ended before its form was read'))
      })
    })
    this.settled.catch(() => undefined)
  }

  private partStart(info: PartInfo): void {
    const head = Buffer.from(JSON.stringify([info.name, info.filename, info.contentType]))
    this.form.update(`${head.length}:`).update(head)
    this.part = createHash('sha256')
  }

  private partEnd(): void {
    if (this.part !== null) this.form.update(this.part.digest())
    this.part = null
  }

  /** The form's digest once the whole upload has been read; null before, or when it was malformed. */
  digest(): string | null {
    return this.value
  }

  /** Resolves with the digest when the upload ends (rejects if it is cut off). */
  whenRead(): Promise<string | null> {
    return this.settled
  }
}

/** Multipart: what idempotency knows of the form as it streams, and a way to read the rest of it. */
export interface FormWitness {
  /** The whole form's digest, once it has been read; null before. */
  digest(): string | null
  /** Reads the rest of the upload (dropping it) and resolves with the form's digest. */
  readToEnd(): Promise<string | null>
}

/**
 * The form of an upload going through `relay`. Reading it to its end sends nothing upstream: the
 * body goes through the relay (so its checks apply) and is dropped.
 */
export function formWitness(relay: MultipartRelay, form: FormDigest, model: string): FormWitness {
  return {
    digest: () => form.digest(),
    readToEnd: () =>
      new Promise((resolve, reject) => {
        if (relay.failed !== null) {
          reject(relay.failed)
          return
        }
        relay.onFailure(reject)
        form.whenRead().then(resolve, reject)
        const drained = relay.body(model, model)
        drained.on('error', () => undefined)
        drained.resume()
      })
  }
}
