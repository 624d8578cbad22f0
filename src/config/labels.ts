/**
 * Kubernetes' rules for label keys and values (node labels and taints).
 * The schema checks the characters and lengths it can express with
 * patterns; what it cannot (the length of a key's prefix) is checked here.
 */

/** Longest label value, and longest name part of a key. */
export const LABEL_NAME_MAX = 63;
/** Longest prefix of a label key (a DNS subdomain). */
export const LABEL_PREFIX_MAX = 253;

/** What is wrong with a label key that the schema's pattern cannot see, or undefined. */
export function labelKeyProblem(key: string): string | undefined {
  const slash = key.indexOf('/');
  if (slash > LABEL_PREFIX_MAX) {
    return `the prefix of the key (before "/") is ${slash} characters; a prefix is a DNS subdomain of at most ${LABEL_PREFIX_MAX} characters`;
  }
  return undefined;
}

/**
 * Turns any string into a valid label value: characters other than letters,
 * digits, '-', '_' and '.' become '-', the ends are trimmed to a letter or
 * digit and the result is at most 63 characters (`0.1.0+build.7` gives
 * `0.1.0-build.7`). A string with no letter or digit gives "".
 */
export function toLabelValue(s: string): string {
  return s
    .replace(/[^A-Za-z0-9._-]/g, '-')
    .replace(/^[^A-Za-z0-9]+/, '')
    .slice(0, LABEL_NAME_MAX)
    .replace(/[^A-Za-z0-9]+$/, '');
}
