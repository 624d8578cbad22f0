/** The version of cairn, kept in step with package.json by the bundler. */
export const VERSION: string = process.env.CAIRN_VERSION ?? '0.1.0';
