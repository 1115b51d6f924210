/**
 * What each OpenAI image model accepts (../shared/openai-images-spec.md §2-§5), as data.
 * A configured model whose name is not here (and that names no `rulesOf`) is relayed with only
 * the checks every image endpoint shares: new models and parameters must not need a release.
 */
export type Endpoint = 'generations' | 'edits' | 'variations'

const MiB = 1024 * 1024

export interface FileRules {
  maxImages: number
  imageFormats: readonly ('png' | 'jpeg' | 'webp')[]
  /** OpenAI says "less than": a file of exactly this many bytes is refused. */
  imageMaxBytes: number
  squareImage: boolean
  maskMaxBytes: number
}

export interface ModelRules {
  family: 'dall-e-2' | 'dall-e-3' | 'gpt-image'
  endpoints: readonly Endpoint[]
  promptMaxChars: number
  nMax: number
  sizes: readonly string[]
  /** gpt-image-2: any WIDTHxHEIGHT within the limits of isArbitrarySizeAllowed. */
  arbitrarySizes: boolean
  qualities: readonly string[]
  inputFidelity: boolean
  /**
   * Whether `response_format` is taken. GPT image models refuse it (they answer base64 only),
   * unless the gateway answers it for them (a model with `hostImages`, docs/images.md).
   */
  responseFormat: boolean
  files: FileRules
}

const DALL_E_2: ModelRules = {
  family: 'dall-e-2',
  endpoints: ['generations', 'edits', 'variations'],
  promptMaxChars: 1000,
  nMax: 10,
  sizes: ['256x256', '512x512', '1024x1024'],
  arbitrarySizes: false,
  qualities: ['standard', 'auto'],
  inputFidelity: false,
  responseFormat: true,
  files: { maxImages: 1, imageFormats: ['png'], imageMaxBytes: 4 * MiB, squareImage: true, maskMaxBytes: 4 * MiB }
}

const DALL_E_3: ModelRules = {
  family: 'dall-e-3',
  endpoints: ['generations'],
  promptMaxChars: 4000,
  nMax: 1,
  sizes: ['1024x1024', '1792x1024', '1024x1792'],
  arbitrarySizes: false,
  qualities: ['standard', 'hd', 'auto'],
  inputFidelity: false,
  responseFormat: true,
  files: DALL_E_2.files
}

const GPT_IMAGE: ModelRules = {
  family: 'gpt-image',
  endpoints: ['generations', 'edits'],
  promptMaxChars: 32000,
  nMax: 10,
  sizes: ['auto', '1024x1024', '1536x1024', '1024x1536'],
  arbitrarySizes: false,
  qualities: ['low', 'medium', 'high', 'auto'],
  inputFidelity: true,
  responseFormat: false,
  files: {
    maxImages: 16,
    imageFormats: ['png', 'jpeg', 'webp'],
    imageMaxBytes: 50 * MiB,
    squareImage: false,
    maskMaxBytes: 4 * MiB
  }
}

const KNOWN_MODELS: ReadonlyMap<string, ModelRules> = new Map([
  ['dall-e-2', DALL_E_2],
  ['dall-e-3', DALL_E_3],
  ['gpt-image-1', GPT_IMAGE],
  ['gpt-image-1-mini', { ...GPT_IMAGE, inputFidelity: false }],
  ['gpt-image-1.5', GPT_IMAGE],
  ['chatgpt-image-latest', GPT_IMAGE],
  ['gpt-image-2', { ...GPT_IMAGE, arbitrarySizes: true }],
  ['gpt-image-2-2026-04-21', { ...GPT_IMAGE, arbitrarySizes: true }]
])

export const KNOWN_MODEL_NAMES: readonly string[] = [...KNOWN_MODELS.keys()]

export function rulesFor(name: string): ModelRules | null {
  return KNOWN_MODELS.get(name) ?? null
}

/** Parameters only GPT image models take: their presence moves the generations default off dall-e-2. */
const GPT_ONLY_PARAMS = ['output_format', 'output_compression', 'background', 'moderation', 'stream', 'partial_images']

/**
 * OpenAI's model when the request names none (spec §2, "Model defaulting"). Which GPT image model
 * generations picks implicitly is unconfirmed; we use the edits default, gpt-image-1.5.
 */
export function defaultModel(endpoint: Endpoint, has: (param: string) => boolean): string {
  if (endpoint === 'edits') return 'gpt-image-1.5'
  if (endpoint === 'variations') return 'dall-e-2'
  return GPT_ONLY_PARAMS.some(has) ? 'gpt-image-1.5' : 'dall-e-2'
}

const MAX_ARBITRARY_PIXELS = 3840 * 2160

/** gpt-image-2 sizes: edges multiples of 16, aspect within 1:3..3:1, at most 3840x2160 (spec §2). */
export function checkArbitrarySize(size: string): string | null {
  const match = /^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$/.exec(size)
  if (!match) return 'must be "auto" or WIDTHxHEIGHT'
  const width = Number(match[1])
  const height = Number(match[2])
  if (width % 16 !== 0 || height % 16 !== 0) return 'both edges must be multiples of 16'
  if (Math.max(width, height) > 3 * Math.min(width, height)) return 'the aspect ratio must be between 1:3 and 3:1'
  if (Math.max(width, height) > 3840 || width * height > MAX_ARBITRARY_PIXELS) return 'the largest size is 3840x2160'
  return null
}

/** When OpenAI released each model, as `created` in the model list (spec §2 dates). */
const RELEASED: ReadonlyMap<string, string> = new Map([
  ['dall-e-2', '2022-11-03'],
  ['dall-e-3', '2023-11-06'],
  ['gpt-image-1', '2025-04-23'],
  ['gpt-image-1-mini', '2025-10-06'],
  ['gpt-image-1.5', '2025-12-16'],
  ['chatgpt-image-latest', '2025-12-16'],
  ['gpt-image-2', '2026-04-21'],
  ['gpt-image-2-2026-04-21', '2026-04-21']
])

/** Unix seconds, or null for a model we do not know. */
export function releasedAt(name: string): number | null {
  const date = RELEASED.get(name)
  return date === undefined ? null : Date.parse(`${date}T00:00:00Z`) / 1000
}
