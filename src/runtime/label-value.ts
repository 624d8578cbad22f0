/**
 * A string made into a valid Kubernetes label value: at most 63 characters
 * of [A-Za-z0-9._-], beginning and ending with a letter or digit (or empty).
 * Other characters (a `+` in a version, say) become `_`.
 */
export function toLabelValue(s: string): string {
  let v = s.replace(/[^A-Za-z0-9._-]/g, '_');
  v = v.replace(/^[^A-Za-z0-9]+/, '').slice(0, 63).replace(/[^A-Za-z0-9]+$/, '');
  return v;
}
