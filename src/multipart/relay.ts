import type { IncomingMessage } from 'node:http'
import { Readable } from 'node:stream'
import { GatewayError } from '../errors/catalogue.js'
import { lingerOnClose } from '../http/lingering-close.js'
import type { Endpoint, ModelRules } from '../openai/models.js'
import { FormInspector } from './inspector.js'
import { MultipartScanner, MultipartSyntaxError } from './scanner.js'
import { ByteSpool } from './spool.js'

export interface RelayOptions {
  endpoint: Endpoint
  boundary: string
  maxBodyBytes: number
  holdMemoryBytes: number
  /** An upload that sends nothing for this long is failed (408), so it cannot hold an upstream call open. */
  idleTimeoutMs: number
  /** The client's Content-Length, when it sent one (a chunked upload has none). */
  declaredBytes?: number | null
}

/** How the upstream body differs from the client's: the `model` value swapped, or a model part added. */
interface Rewrite {
  start: number
  end: number
  bytes: Buffer
}

type Mode = 'holding' | 'routing' | 'streaming' | 'failed'

const UPSTREAM_BODY_HIGH_WATER_MARK = 64 * 1024
/** After refusing an upload, what we read past the body cap before cutting the client off. */
const DRAIN_PAST_CAP_BYTES = 8 * 1024 * 1024

/**
 * Carries one multipart upload from the client to the upstream, byte for byte. A scanner reads the
 * same bytes on the side. Until the `model` field (or the form's end) has been seen, the bytes are
 * held in a spool; then they are replayed and the rest streams live with backpressure. A chunk goes
 * upstream only after the scanner has read it and every rule it could break has passed, so when a
 * rule breaks, the upstream body is failed before the form's closing boundary ever reaches it.
 */
export class MultipartRelay {
  readonly inspector: FormInspector
  /** Resolves when the model can be decided; rejects with what was wrong if the upload fails first. */
  readonly routable: Promise<void>
  bytesIn = 0
  private readonly source: IncomingMessage
  /** The client's Content-Length, when it sent one (a chunked upload has none). */
  private readonly declaredBytes: number | null
  private readonly options: RelayOptions
  private readonly scanner: MultipartScanner
  private readonly spool: ByteSpool
  private readonly failureListeners: ((err: GatewayError) => void)[] = []
  private mode: Mode = 'holding'
  private modelSeen = false
  private sourceEnded = false
  private output: Readable | null = null
  private replay: Readable | null = null
  private failure: GatewayError | null = null
  private resolveRoutable!: () => void
  private rejectRoutable!: (err: GatewayError) => void
  private spoolWrites = 0
  private endPushed = false
  private idleTimer: NodeJS.Timeout | null = null
  private endGate: (() => Promise<void>) | null = null
  private gating = false
  /** Streamed bytes are still being kept for a replay (see keepForReplay), up to replayBytes. */
  private recording = false
  private replayBytes = 0

  constructor(source: IncomingMessage, options: RelayOptions) {
    this.source = source
    this.declaredBytes = options.declaredBytes ?? null
    this.options = options
    this.inspector = new FormInspector(options.endpoint, () => {
      this.modelSeen = true
    })
    this.scanner = new MultipartScanner(options.boundary, this.inspector)
    this.spool = new ByteSpool(options.holdMemoryBytes)
    this.routable = new Promise((resolve, reject) => {
      this.resolveRoutable = resolve
      this.rejectRoutable = reject
    })
    // A failure before routing is reported through `routable`; keep an unobserved one quiet.
    this.routable.catch(() => undefined)
    source.on('data', (chunk: Buffer) => this.onData(chunk))
    source.once('end', () => this.onEnd())
    source.once('error', () => this.onSourceError())
    this.idleTimer = setTimeout(() => this.onIdle(), options.idleTimeoutMs).unref()
  }

  /**
   * Silence from the client counts only while we are waiting for its bytes; a source we paused
   * ourselves (backpressure, routing, the end gate) is not the client's doing.
   */
  private onIdle(): void {
    this.idleTimer = null
    if (this.sourceEnded || this.mode === 'failed') return
    if (this.source.isPaused()) {
      this.idleTimer = setTimeout(() => this.onIdle(), this.options.idleTimeoutMs).unref()
      return
    }
    // The 408 goes out with Connection: close, which ends the connection once it is written.
    this.fail(new GatewayError('request_timeout', `The upload sent nothing for ${this.options.idleTimeoutMs / 1000} s.`))
  }

  get failed(): GatewayError | null {
    return this.failure
  }

  /** Every byte of the upstream body has been handed over (the upstream may have the whole request). */
  get bodyEnded(): boolean {
    return this.output?.readableEnded === true || this.endPushed
  }

  onFailure(listener: (err: GatewayError) => void): void {
    this.failureListeners.push(listener)
  }

  private onData(chunk: Buffer): void {
    if (this.mode === 'failed') return
    this.idleTimer?.refresh()
    this.bytesIn += chunk.length
    if (this.bytesIn > this.options.maxBodyBytes) {
      this.fail(new GatewayError('request_too_large', `The request body is over ${this.options.maxBodyBytes} bytes.`))
      return
    }
    try {
      this.scanner.write(chunk)
      // The client's last byte by its Content-Length, and the form has not closed: refuse it now.
      // The upstream is sent the same length, so this chunk would complete its request with a form
      // that never closes, and a lenient upstream parser might run it.
      if (this.bytesIn === this.declaredBytes) this.scanner.end()
    } catch (err) {
      this.fail(asGatewayError(err))
      return
    }
    if (this.mode === 'streaming') {
      if (this.inspector.formEnded && this.endGate !== null) this.passGate(chunk, this.endGate)
      else this.deliver(chunk)
      return
    }
    const pending = this.spool.append(chunk)
    if (pending !== undefined) {
      this.spoolWrites++
      this.source.pause()
      pending.then(
        () => {
          this.spoolWrites--
          this.afterHeld()
        },
        (err: unknown) => this.fail(new GatewayError('internal_error', 'The upload could not be held.', { cause: err }))
      )
      return
    }
    this.afterHeld()
  }

  /**
   * A live chunk that passed every check: kept for a replay while that is still possible, and sent
   * to the current upstream body (between two attempts there is none; the next replays it).
   */
  private deliver(chunk: Buffer): void {
    if (this.recording) this.record(chunk)
    // While a replay runs, it reads what was just recorded: pushing too would send it twice. With
    // no live body (between attempts) the source waits for the next one.
    if (!this.isLive() || this.output === null) this.source.pause()
    else if (!this.output.push(chunk)) this.source.pause()
  }

  /** Live bytes go straight to the current upstream body (no replay before them). */
  private isLive(): boolean {
    return this.mode === 'streaming' && this.replay === null && this.output !== null && !this.output.destroyed
  }

  private record(chunk: Buffer): void {
    if (this.spool.size + chunk.length > this.replayBytes) {
      this.recording = false
      void this.spool.dispose()
      return
    }
    const pending = this.spool.append(chunk)
    if (pending === undefined) return
    this.spoolWrites++
    this.source.pause()
    pending.then(
      () => {
        this.spoolWrites--
        if (this.spoolWrites === 0 && this.wantsMore()) this.source.resume()
      },
      (err: unknown) => this.fail(new GatewayError('internal_error', 'The upload could not be kept.', { cause: err }))
    )
  }

  /**
   * The live source may flow: streaming to an upstream body, nothing queued on the way. (Whether the
   * body has room is its own business: a full one pauses the source again on the next push.)
   */
  private wantsMore(): boolean {
    return this.isLive() && !this.sourceEnded && !this.gating && this.spoolWrites === 0
  }

  /**
   * From routing on, every byte is kept (memory, then a temporary file) up to `maxBytes`, so that
   * the body can be sent again to another deployment; past that, keeping stops for good. Call it
   * before the first `body()`.
   */
  keepForReplay(maxBytes: number): void {
    if (this.output !== null || this.mode === 'failed') return
    this.replayBytes = maxBytes
    this.recording = this.spool.size <= maxBytes
  }

  /** Whether the body can be sent again (see keepForReplay). */
  get replayable(): boolean {
    return this.recording && this.mode !== 'failed'
  }

  /** After a held chunk is kept: route if the model is known or the form ended, else read on. */
  private afterHeld(): void {
    if (this.mode !== 'holding' || this.spoolWrites > 0) return
    if (this.modelSeen || this.inspector.formEnded) {
      this.mode = 'routing'
      this.source.pause()
      this.resolveRoutable()
    } else {
      this.source.resume()
    }
  }

  /**
   * The chunk that closes the form waits for the gate (a last asynchronous check, such as the
   * key's limits for an `n` that came late); if the gate refuses, the upstream never gets it.
   */
  private passGate(chunk: Buffer, gate: () => Promise<void>): void {
    this.endGate = null
    this.gating = true
    this.source.pause()
    gate().then(
      () => {
        this.gating = false
        if (this.mode === 'failed') return
        this.deliver(chunk)
        // Between attempts, or during a replay, the replay's end ends the body.
        if (!this.isLive()) return
        if (this.sourceEnded) this.endOutput()
        else if (this.wantsMore()) this.source.resume()
      },
      (err: unknown) => {
        this.gating = false
        this.fail(asGatewayError(err))
      }
    )
  }

  /** A last check before the form's closing chunk goes upstream (see passGate). */
  setEndGate(gate: () => Promise<void>): void {
    this.endGate = gate
  }

  private onEnd(): void {
    this.sourceEnded = true
    this.stopIdleTimer()
    if (this.mode === 'failed' || this.gating) return
    try {
      this.scanner.end()
    } catch (err) {
      this.fail(asGatewayError(err))
      return
    }
    if (this.mode === 'streaming' && this.replay === null) this.endOutput()
  }

  private endOutput(): void {
    this.endPushed = true
    this.output?.push(null)
  }

  private onSourceError(): void {
    // The client went away mid-upload; the route's abort signal answers for it.
    this.fail(new GatewayError('invalid_multipart', 'The upload was cut off before it ended.'))
  }

  /**
   * The model is decided: checks all that was seen against its rules (throws what breaks them), and
   * notes how the upstream's model name differs from the client's.
   */
  route(model: string, rules: ModelRules | null): void {
    if (this.failure !== null) throw this.failure
    this.inspector.route(model, rules)
  }

  private rewriteFor(upstreamModel: string, clientModel: string): Rewrite | null {
    const range = this.inspector.modelRange
    if (range !== null) {
      return upstreamModel === clientModel ? null : { ...range, bytes: Buffer.from(upstreamModel, 'utf8') }
    }
    // No model field, so the form has ended (that is how OpenAI's default was chosen): name the
    // model explicitly, in a part added before the closing delimiter, so routing and upstream agree.
    const at = this.inspector.closeOffset
    const part = `\r\n--${this.options.boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n${upstreamModel}`
    return { start: at, end: at, bytes: Buffer.from(part, 'utf8') }
  }

  /** The upstream body's length, when the client declared its own. */
  upstreamLength(clientLength: number | null, upstreamModel: string, clientModel: string): number | null {
    if (clientLength === null) return null
    const rewrite = this.rewriteFor(upstreamModel, clientModel)
    return rewrite === null ? clientLength : clientLength - (rewrite.end - rewrite.start) + rewrite.bytes.length
  }

  /**
   * The body to send upstream: the kept bytes (with the model rewritten if needed), then the rest
   * live. Asked again (another deployment after a failed attempt), it replays everything from the
   * start, if the body is still `replayable`.
   */
  body(upstreamModel: string, clientModel: string): Readable {
    if (this.output !== null) {
      if (!this.replayable) throw new Error('the upstream body was already taken')
      this.detach()
    }
    this.endPushed = false
    const output = new Readable({
      highWaterMark: UPSTREAM_BODY_HIGH_WATER_MARK,
      read: () => {
        if (this.output !== output) return
        if (this.replay !== null) this.replay.resume()
        else if (this.wantsMore()) this.source.resume()
      },
      destroy: (err, callback) => {
        this.replay?.destroy()
        callback(err)
      }
    })
    this.output = output
    this.replayFrom(output, this.rewriteFor(upstreamModel, clientModel), 0)
    return output
  }

  /**
   * Sends the kept bytes from `from` on into `output`. The source is paused meanwhile, but a chunk
   * already on its way (or one let through by the end gate) is kept too, so the replay reads on
   * until the spool stops growing, and checks once more when it ends.
   */
  private replayFrom(output: Readable, rewrite: Rewrite | null, from: number): void {
    const spool = this.spool
    const progress = { to: from }
    const replay = Readable.from(
      (async function* () {
        for (;;) {
          await spool.settled()
          const to = spool.size
          if (progress.to >= to) return
          yield* readRewritten(spool, rewrite, progress.to, to)
          progress.to = to
        }
      })()
    )
    this.replay = replay
    replay.on('data', (chunk: Buffer) => {
      if (!output.push(chunk)) replay.pause()
    })
    replay.once('error', (err) => this.fail(new GatewayError('internal_error', 'The held upload could not be read.', { cause: err })))
    replay.once('end', () => {
      if (this.replay !== replay) return
      this.replay = null
      if (this.mode === 'failed') return
      if (this.spool.size > progress.to) {
        this.replayFrom(output, rewrite, progress.to)
        return
      }
      this.mode = 'streaming'
      if (!this.recording) void this.spool.dispose()
      // A closing chunk still at the end gate is not in the spool yet: the gate ends the body.
      if (this.gating) return
      if (this.sourceEnded) this.endOutput()
      else if (this.wantsMore()) this.source.resume()
    })
  }

  /** Lets go of a failed attempt's body; the source waits (bytes that still come are kept) until the next. */
  private detach(): void {
    const output = this.output
    const replay = this.replay
    this.output = null
    this.replay = null
    this.source.pause()
    if (this.mode === 'streaming') this.mode = 'routing'
    replay?.destroy()
    if (output !== null && !output.destroyed) output.destroy()
  }

  /** Stops the upload: the upstream body fails (so the upstream never sees a complete form). */
  fail(err: GatewayError): void {
    if (this.mode === 'failed') return
    this.mode = 'failed'
    this.failure = err
    this.rejectRoutable(err)
    this.output?.destroy(err)
    this.replay?.destroy()
    void this.spool.dispose()
    for (const listener of this.failureListeners) listener(err)
    this.drain()
  }

  /**
   * Reads and drops what the client still sends, so it reads our answer instead of a reset: any
   * upload within the body cap is read to its end; past the cap (plus a margin) the client is cut off.
   */
  private drain(): void {
    if (this.sourceEnded) return
    lingerOnClose(this.source, {
      maxBytes: Math.max(0, this.options.maxBodyBytes + DRAIN_PAST_CAP_BYTES - this.bytesIn),
      idleMs: this.options.idleTimeoutMs
    })
  }

  private stopIdleTimer(): void {
    if (this.idleTimer !== null) clearTimeout(this.idleTimer)
    this.idleTimer = null
  }

  /** Releases what the relay holds; safe to call at any time and more than once. */
  dispose(): void {
    this.stopIdleTimer()
    this.replay?.destroy()
    void this.spool.dispose()
  }
}

/** The spool's bytes from `from` to `to`, with the rewrite's range replaced by its bytes. */
async function* readRewritten(spool: ByteSpool, rewrite: Rewrite | null, from: number, to: number): AsyncGenerator<Buffer> {
  // The first window always holds the whole rewritten range (routing waited for it).
  if (rewrite === null || rewrite.start < from || rewrite.start >= to) {
    yield* spool.read(from, to) as AsyncIterable<Buffer>
    return
  }
  yield* spool.read(from, rewrite.start) as AsyncIterable<Buffer>
  yield rewrite.bytes
  yield* spool.read(Math.min(rewrite.end, to), to) as AsyncIterable<Buffer>
}

function asGatewayError(err: unknown): GatewayError {
  if (err instanceof GatewayError) return err
  if (err instanceof MultipartSyntaxError) return new GatewayError('invalid_multipart', `Malformed multipart body: ${err.message}.`)
  return new GatewayError('internal_error', 'The upload could not be read.', { cause: err })
}
