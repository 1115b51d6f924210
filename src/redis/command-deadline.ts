import { Cluster, Redis, type ClusterNode, type ClusterOptions, type Command, type RedisOptions } from 'ioredis'

/**
 * A command deadline for a Redis that does not answer, not for a gateway too busy to read the
 * answer. ioredis's own `commandTimeout` rejects from a timer, and timers run before the poll
 * for I/O: after the event loop was held past the deadline (a long GC pause, a large answer
 * rewritten), a reply already waiting in the socket was refused as a timeout, and a budgeted key
 * got a 503. Here the expired timer first lets one poll for I/O pass (setImmediate runs after
 * it), and rejects only if the reply still has not come.
 *
 * The clients below take `commandTimeout` in their options as ioredis does, and keep it from
 * ioredis, which would otherwise arm its own timer as well.
 */
function armDeadline(command: Command, ms: number): void {
  if (armed.has(command)) return
  armed.add(command)
  const expire = (): void => {
    if (!command.isSettled) command.reject(new Error('Command timed out'))
  }
  const timer = setTimeout(() => setImmediate(expire), ms)
  // The timer must not hold the command (its arguments and reply, MBs on the images connection)
  // once it is settled. A settled command may be sent again with a new promise (a cluster
  // pipeline retried after MOVED or ASK): it gets a deadline of its own then, as with ioredis's.
  const { resolve, reject } = command
  command.resolve = (value: unknown): void => {
    clearTimeout(timer)
    armed.delete(command)
    resolve(value)
  }
  command.reject = (error: Error): void => {
    clearTimeout(timer)
    armed.delete(command)
    reject(error)
  }
}

/** A cluster may send one unsettled command twice (its offline queue): one deadline per promise. */
const armed = new WeakSet<Command>()

/** One server or a Sentinel-managed primary, with the lag-tolerant deadline. */
export class DeadlineRedis extends Redis {
  private readonly deadlineMs: number | undefined

  constructor(options: RedisOptions, url?: string) {
    // Replies in ioredis's legacy shape, the one RedisClient and every caller expect.
    const { commandTimeout, replyMapping: _replies, ...rest } = options
    if (url === undefined) super(rest)
    else super(url, rest)
    this.deadlineMs = commandTimeout
  }

  override sendCommand(command: Command, stream?: Parameters<Redis['sendCommand']>[1]): unknown {
    // No deadline for a client made without one (the subscriber waits by design).
    if (this.deadlineMs !== undefined) armDeadline(command, this.deadlineMs)
    return super.sendCommand(command, stream)
  }

  /** A second connection to the same server with its own deadline (ioredis's `duplicate` makes a plain client). */
  withDeadline(deadlineMs: number, connectionName: string): DeadlineRedis {
    return new DeadlineRedis({ ...this.options, commandTimeout: deadlineMs, connectionName })
  }
}

/** A Redis Cluster, with the deadline armed at the cluster each time a command is sent (not per node). */
export class DeadlineCluster extends Cluster {
  private readonly deadlineMs: number | undefined
  private readonly seedNodes: ClusterNode[]

  constructor(nodes: ClusterNode[], options: ClusterOptions) {
    const { commandTimeout, replyMapping: _replies, ...redisOptions } = options.redisOptions ?? {}
    super(nodes, { ...options, redisOptions })
    this.deadlineMs = commandTimeout
    this.seedNodes = nodes
  }

  override sendCommand(command: Command, stream?: Parameters<Cluster['sendCommand']>[1], node?: unknown): unknown {
    if (this.deadlineMs !== undefined) armDeadline(command, this.deadlineMs)
    return super.sendCommand(command, stream, node)
  }

  /** Second connections to the same cluster with their own deadline. */
  withDeadline(deadlineMs: number, connectionName: string): DeadlineCluster {
    return new DeadlineCluster(this.seedNodes, {
      ...this.options,
      redisOptions: { ...this.options.redisOptions, commandTimeout: deadlineMs, connectionName }
    })
  }
}
