/**
 * A 5×7 bitmap font drawn as one SVG path of squares. SVG `<text>` would need system fonts
 * through fontconfig, which a bare CI machine lacks (errors, or tofu boxes), so the sandbox's
 * images would depend on the machine; squares render the same everywhere.
 */

const GLYPH_COLUMNS = 5
const GLYPH_ROWS = 7
/** One blank column between glyphs. */
export const GLYPH_ADVANCE_CELLS = GLYPH_COLUMNS + 1
export const GLYPH_HEIGHT_CELLS = GLYPH_ROWS

/** Each glyph: seven rows, top first, `#` lit; rows separated by spaces. */
const GLYPH_ROWS_BY_CHAR: Readonly<Record<string, string>> = {
  A: '.###. #...# #...# ##### #...# #...# #...#',
  B: '####. #...# #...# ####. #...# #...# ####.',
  C: '.###. #...# #.... #.... #.... #...# .###.',
  D: '###.. #..#. #...# #...# #...# #..#. ###..',
  E: '##### #.... #.... ####. #.... #.... #####',
  F: '##### #.... #.... ####. #.... #.... #....',
  G: '.###. #...# #.... #.### #...# #...# .####',
  H: '#...# #...# #...# ##### #...# #...# #...#',
  I: '.###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.',
  J: '..### ...#. ...#. ...#. ...#. #..#. .##..',
  K: '#...# #..#. #.#.. ##... #.#.. #..#. #...#',
  L: '#.... #.... #.... #.... #.... #.... #####',
  M: '#...# ##.## #.#.# #.#.# #...# #...# #...#',
  N: '#...# #...# ##..# #.#.# #..## #...# #...#',
  O: '.###. #...# #...# #...# #...# #...# .###.',
  P: '####. #...# #...# ####. #.... #.... #....',
  Q: '.###. #...# #...# #...# #.#.# #..#. .##.#',
  R: '####. #...# #...# ####. #.#.. #..#. #...#',
  S: '.#### #.... #.... .###. ....# ....# ####.',
  T: '##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..',
  U: '#...# #...# #...# #...# #...# #...# .###.',
  V: '#...# #...# #...# #...# #...# .#.#. ..#..',
  W: '#...# #...# #...# #.#.# #.#.# #.#.# .#.#.',
  X: '#...# #...# .#.#. ..#.. .#.#. #...# #...#',
  Y: '#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..',
  Z: '##### ....# ...#. ..#.. .#... #.... #####',
  '0': '.###. #...# #..## #.#.# ##..# #...# .###.',
  '1': '..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.',
  '2': '.###. #...# ....# ...#. ..#.. .#... #####',
  '3': '##### ...#. ..#.. ...#. ....# #...# .###.',
  '4': '...#. ..##. .#.#. #..#. ##### ...#. ...#.',
  '5': '##### #.... ####. ....# ....# #...# .###.',
  '6': '..##. .#... #.... ####. #...# #...# .###.',
  '7': '##### ....# ...#. ..#.. .#... .#... .#...',
  '8': '.###. #...# #...# .###. #...# #...# .###.',
  '9': '.###. #...# #...# .#### ....# ...#. .##..',
  ' ': '..... ..... ..... ..... ..... ..... .....',
  '.': '..... ..... ..... ..... ..... .##.. .##..',
  ',': '..... ..... ..... ..... .##.. ..#.. .#...',
  '!': '..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..',
  '?': '.###. #...# ....# ...#. ..#.. ..... ..#..',
  "'": '..#.. ..#.. .#... ..... ..... ..... .....',
  '"': '.#.#. .#.#. .#.#. ..... ..... ..... .....',
  '-': '..... ..... ..... ##### ..... ..... .....',
  '+': '..... ..#.. ..#.. ##### ..#.. ..#.. .....',
  ':': '..... .##.. .##.. ..... .##.. .##.. .....',
  '&': '.##.. #..#. #.#.. .#... #.#.# #..#. .##.#',
  '/': '..... ....# ...#. ..#.. .#... #.... .....',
  '(': '...#. ..#.. .#... .#... .#... ..#.. ...#.',
  ')': '.#... ..#.. ...#. ...#. ...#. ..#.. .#...',
  '#': '.#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.'
}

/** Per glyph, per row: the lit runs as [first column, length], so a row draws as few squares as possible. */
type GlyphRuns = readonly (readonly [number, number])[][]

function runsOf(rows: string): GlyphRuns {
  return rows.split(' ').map((row) => {
    const runs: [number, number][] = []
    let start = -1
    for (let column = 0; column <= row.length; column++) {
      const lit = row[column] === '#'
      if (lit && start < 0) start = column
      if (!lit && start >= 0) {
        runs.push([start, column - start])
        start = -1
      }
    }
    return runs
  })
}

const GLYPHS: ReadonlyMap<string, GlyphRuns> = new Map(
  Object.entries(GLYPH_ROWS_BY_CHAR).map(([char, rows]) => [char, runsOf(rows)])
)

/**
 * The text as the font can draw it: upper case, accents dropped (é → E), characters it has no
 * glyph for left out, spaces collapsed.
 */
export function drawableText(text: string): string {
  const folded = text.normalize('NFKD').toUpperCase()
  let out = ''
  for (const char of folded) {
    const drawable = /\s/.test(char) ? ' ' : GLYPHS.has(char) ? char : ''
    if (drawable === ' ' && (out === '' || out.endsWith(' '))) continue
    out += drawable
  }
  return out.trimEnd()
}

/**
 * SVG path data for one line of drawable text with its top-left corner at (x, y), each font cell
 * `cellPx` pixels square. Characters without a glyph are skipped (use drawableText first).
 */
export function textPath(text: string, x: number, y: number, cellPx: number): string {
  const parts: string[] = []
  let left = x
  for (const char of text) {
    const glyph = GLYPHS.get(char)
    if (glyph === undefined) continue
    glyph.forEach((runs, row) => {
      for (const [column, length] of runs) {
        const width = length * cellPx
        parts.push(`M${left + column * cellPx} ${y + row * cellPx}h${width}v${cellPx}h-${width}z`)
      }
    })
    left += GLYPH_ADVANCE_CELLS * cellPx
  }
  return parts.join('')
}
