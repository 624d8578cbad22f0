// The project's shared test data lives beside the checkout, in ../shared
// (CAIRN_SHARED_DIR points elsewhere). k3OS' README sample config is used from
// there, byte for byte, never copied into the project.
import { fileURLToPath } from 'node:url';
import { resolve } from 'node:path';

const root = fileURLToPath(new URL('../..', import.meta.url));
export const SHARED_DIR = process.env.CAIRN_SHARED_DIR ?? resolve(root, '..', 'shared');
export const K3OS_SAMPLE = resolve(SHARED_DIR, 'testdata/k3os/readme-sample-config.yaml');
