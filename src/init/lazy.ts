/**
 * Node.js' own modules that the boot needs only on some paths, loaded when
 * first used (process.getBuiltinModule): every one that is imported at the
 * top is compiled when the init starts, which costs a tenth of a second or
 * more each on a small board or under emulation.
 */
export const crypto = (): typeof import('node:crypto') => process.getBuiltinModule('node:crypto');
export const zlib = (): typeof import('node:zlib') => process.getBuiltinModule('node:zlib');
export const https = (): typeof import('node:https') => process.getBuiltinModule('node:https');
