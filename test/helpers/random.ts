import { seededRandom, type Rng } from '../../src/sandbox/seeded-random.js'

export { seededRandom, type Rng }

/** A whole number from min to max, both included. */
export function int(rng: Rng, min: number, max: number): number {
  return min + Math.floor(rng() * (max - min + 1))
}
