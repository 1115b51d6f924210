import { z } from 'zod'
import {
  DEFAULT_BODY_IDLE_TIMEOUT_MS,
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_HEADERS_TIMEOUT_MS,
  DEFAULT_HOLD_MEMORY_BYTES,
  DEFAULT_HOST,
  DEFAULT_JSON_BODY_BYTES,
  DEFAULT_JSON_EDIT_BODY_BYTES,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_MULTIPART_BODY_BYTES,
  DEFAULT_PORT
} from './defaults.js'
import { KNOWN_MODEL_NAMES } from '../openai/models.js'

export const PROVIDER_TYPES = ['openai'] as const

const positiveInt = z.number().int().positive()
const byteCount = positiveInt

const timeoutsSchema = z
  .object({
    connectMs: positiveInt.default(DEFAULT_CONNECT_TIMEOUT_MS),
    headersMs: positiveInt.default(DEFAULT_HEADERS_TIMEOUT_MS),
    bodyIdleMs: positiveInt.default(DEFAULT_BODY_IDLE_TIMEOUT_MS)
  })
  .strict()

const headerName = z.string().regex(/^[A-Za-z0-9-]+$/, 'must be a header name (letters, digits, dashes)')
// CR and LF in a configured header value would let config split the upstream request.
const headerValue = z.string().regex(/^[^\r\n]*$/, 'must not contain CR or LF')

const providerSchema = z
  .object({
    id: z.string().regex(/^[A-Za-z0-9_.-]+$/, 'must be letters, digits, "_", "." or "-"'),
    type: z.string(),
    baseUrl: z
      .string()
      .url()
      .refine((u) => /^https?:$/.test(new URL(u).protocol), 'must be an http or https URL')
      .refine((u) => new URL(u).search === '' && new URL(u).hash === '', 'must have no query or fragment'),
    // An empty value (an unset `${VAR:-}`) means no key: some local upstreams take none.
    apiKey: z
      .string()
      .optional()
      .transform((key) => (key === '' ? undefined : key)),
    organization: headerValue.optional(),
    project: headerValue.optional(),
    headers: z.record(headerName, headerValue).default({}),
    timeouts: timeoutsSchema.default({
      connectMs: DEFAULT_CONNECT_TIMEOUT_MS,
      headersMs: DEFAULT_HEADERS_TIMEOUT_MS,
      bodyIdleMs: DEFAULT_BODY_IDLE_TIMEOUT_MS
    }),
    maxConnections: positiveInt.default(DEFAULT_MAX_CONNECTIONS)
  })
  .strict()

const deploymentSchema = z
  .object({
    provider: z.string(),
    /** The name the upstream knows the model by; defaults to the client-facing name. */
    model: z.string().min(1).optional()
  })
  .strict()

const modelSchema = z
  .object({
    name: z.string().min(1).regex(/^[^\s/]+$/, 'must have no spaces or "/"'),
    deployments: z.array(deploymentSchema).min(1),
    /** Whose request rules to check against, for a name the gateway does not know (an alias). */
    rulesOf: z.string().optional()
  })
  .strict()

const limitsSchema = z
  .object({
    jsonBodyBytes: byteCount.default(DEFAULT_JSON_BODY_BYTES),
    jsonEditBodyBytes: byteCount.default(DEFAULT_JSON_EDIT_BODY_BYTES),
    multipartBodyBytes: byteCount.default(DEFAULT_MULTIPART_BODY_BYTES),
    holdMemoryBytes: byteCount.default(DEFAULT_HOLD_MEMORY_BYTES)
  })
  .strict()

const serverSchema = z
  .object({
    host: z.string().min(1).default(DEFAULT_HOST),
    port: z.number().int().min(0).max(65535).default(DEFAULT_PORT),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info')
  })
  .strict()

export const configSchema = z
  .object({
    server: serverSchema.default({ host: DEFAULT_HOST, port: DEFAULT_PORT, logLevel: 'info' }),
    limits: limitsSchema.default({
      jsonBodyBytes: DEFAULT_JSON_BODY_BYTES,
      jsonEditBodyBytes: DEFAULT_JSON_EDIT_BODY_BYTES,
      multipartBodyBytes: DEFAULT_MULTIPART_BODY_BYTES,
      holdMemoryBytes: DEFAULT_HOLD_MEMORY_BYTES
    }),
    providers: z.array(providerSchema).min(1),
    models: z.array(modelSchema).min(1)
  })
  .strict()
  .superRefine((config, ctx) => {
    const providerIds = new Set<string>()
    config.providers.forEach((provider, i) => {
      if (providerIds.has(provider.id)) {
        ctx.addIssue({ code: 'custom', path: ['providers', i, 'id'], message: `duplicate provider id "${provider.id}"` })
      }
      providerIds.add(provider.id)
      if (!(PROVIDER_TYPES as readonly string[]).includes(provider.type)) {
        ctx.addIssue({
          code: 'custom',
          path: ['providers', i, 'type'],
          message: `unknown provider type "${provider.type}" (known: ${PROVIDER_TYPES.join(', ')})`
        })
      }
    })
    const modelNames = new Set<string>()
    config.models.forEach((model, i) => {
      if (modelNames.has(model.name)) {
        ctx.addIssue({ code: 'custom', path: ['models', i, 'name'], message: `duplicate model name "${model.name}"` })
      }
      modelNames.add(model.name)
      if (model.rulesOf !== undefined && !KNOWN_MODEL_NAMES.includes(model.rulesOf)) {
        ctx.addIssue({
          code: 'custom',
          path: ['models', i, 'rulesOf'],
          message: `unknown model "${model.rulesOf}" (known: ${KNOWN_MODEL_NAMES.join(', ')})`
        })
      }
      model.deployments.forEach((deployment, j) => {
        if (!providerIds.has(deployment.provider)) {
          ctx.addIssue({
            code: 'custom',
            path: ['models', i, 'deployments', j, 'provider'],
            message: `unknown provider "${deployment.provider}"`
          })
        }
      })
    })
  })

export type Config = z.infer<typeof configSchema>
export type ProviderConfig = Config['providers'][number]
export type ModelConfig = Config['models'][number]
