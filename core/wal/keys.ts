import type { Readable } from 'node:stream';
import { keyId, keyRing } from '../catalog/keys';
import { errorMessage } from '../errors';
import type { StorageTarget } from '../storage/target';
import { decryptFirstBlock } from '../stream/encrypt';
import type { Vault } from '../vault';
import {
  decodedFileProblem,
  decodingOf,
  openWalObject,
  readArchiveIdentity,
  type WalArchiveIdentity,
  type WalCodec,
  walCodec,
} from './fetch';
import { type WalFileName, walNameFromKey } from './naming';

/**
 * Which key opens each WAL object (`verify wal`, `verify all`): WAL objects are plain openssl files
 * with no manifest to name their key, so the first cipher block of every encrypted object is
 * decrypted with each key of the ring and must start as its compression's format does (the zstd
 * magic, a WAL page header, ...); the newest segments are read through (decrypted, decompressed,
 * size and page header checked). An object no key of the ring opens is a fault: recovery through
 * it would fail.
 */

export interface WalKeyFault {
  readonly key: string;
  readonly target: string;
  readonly problem: string;
}

export interface WalKeyReport {
  /** Objects whose first block was checked. */
  readonly checked: number;
  /** Segments read through. */
  readonly readThrough: number;
  /** Objects per key id that opens them. */
  readonly keys: Record<string, number>;
  readonly faults: WalKeyFault[];
}

/** How many of the newest segments of each target are read through. */
const READ_THROUGH = 3;

/** The first bytes of each compression's output (what a right key decrypts the first block to). */
const MAGIC: Record<string, Buffer> = {
  zstd: Buffer.from([0x28, 0xb5, 0x2f, 0xfd]),
  gzip: Buffer.from([0x1f, 0x8b]),
  xz: Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]),
  bzip2: Buffer.from('BZh', 'latin1'),
  lz4: Buffer.from([0x04, 0x22, 0x4d, 0x18]),
};

function plausibleStart(plain: Buffer, compression: string, file: WalFileName): boolean {
  const magic = MAGIC[compression];
  if (magic !== undefined) return plain.subarray(0, magic.length).equals(magic);
  if (file.kind === 'segment' || file.kind === 'partial') {
    // A long page header: XLP_LONG_HEADER in xlp_info, the name's timeline in xlp_tli.
    return (
      (plain.readUInt16LE(2) & 0x0002) !== 0 && plain.readUInt32LE(4) === Number.parseInt(file.timeline, 16)
    );
  }
  // .history and .backup files are text.
  return [...plain].every((b) => b === 0x09 || b === 0x0a || (b >= 0x20 && b < 0x7f));
}

async function firstBytes(target: StorageTarget, key: string, count: number): Promise<Buffer> {
  const stream: Readable = await target.get(key);
  const chunks: Buffer[] = [];
  let length = 0;
  try {
    for await (const chunk of stream) {
      chunks.push(chunk as Buffer);
      length += (chunk as Buffer).length;
      if (length >= count) break;
    }
  } finally {
    stream.destroy();
  }
  return Buffer.concat(chunks).subarray(0, count);
}

/** Checks every WAL object of the vault's cluster against the key ring (see the file comment). */
export async function checkWalKeys(vault: Vault): Promise<WalKeyReport> {
  const { config, targets } = vault;
  const cluster = config.clusterName;
  const ring = keyRing(config);
  const ids = await Promise.all(ring.map(keyId));
  let identity: WalArchiveIdentity | undefined;
  try {
    identity = (await readArchiveIdentity(targets, cluster)).identity;
  } catch {
    identity = undefined;
  }
  const codecs = new Map<string, Promise<WalCodec[]>>();
  const codecsFor = (file: WalFileName): Promise<WalCodec[]> => {
    const kind = file.kind === 'segment' || file.kind === 'partial' ? 'segment' : 'other';
    let found = codecs.get(kind);
    if (found === undefined) {
      found = Promise.all(ring.map((key) => walCodec(config, identity, file, key)));
      codecs.set(kind, found);
    }
    return found;
  };
  const report = {
    checked: 0,
    readThrough: 0,
    keys: {} as Record<string, number>,
    faults: [] as WalKeyFault[],
  };
  for (const target of targets) {
    const newest: { key: string; file: WalFileName; codec: WalCodec }[] = [];
    try {
      for await (const info of target.list(`${cluster}/wal/`)) {
        const file = walNameFromKey(info.key);
        if (file === undefined) continue;
        let decoding: ReturnType<typeof decodingOf>;
        try {
          decoding = decodingOf(info.key, file);
        } catch (err) {
          report.faults.push({ key: info.key, target: target.location, problem: errorMessage(err) });
          continue;
        }
        if (!decoding.encrypted) continue;
        report.checked++;
        if (ring.length === 0) {
          report.faults.push({
            key: info.key,
            target: target.location,
            problem: `WAL object ${info.key} in ${target.location} is encrypted and no ENCRYPTION_KEY is set`,
          });
          continue;
        }
        const head = await firstBytes(target, info.key, 32);
        const candidates = await codecsFor(file);
        let opener = -1;
        for (const [i, codec] of candidates.entries()) {
          const plain = await decryptFirstBlock(codec.passphrase!, codec.iterations, head);
          if (plain !== undefined && plausibleStart(plain, decoding.compression, file)) {
            opener = i;
            break;
          }
        }
        if (opener < 0) {
          report.faults.push({
            key: info.key,
            target: target.location,
            problem: `WAL object ${info.key} in ${target.location} does not decrypt with the current keys (key id ${ids.join(', ')}): it was written with another key, or is damaged; recovery through it fails`,
          });
          continue;
        }
        report.keys[ids[opener]!] = (report.keys[ids[opener]!] ?? 0) + 1;
        if (file.kind === 'segment') {
          newest.push({ key: info.key, file, codec: candidates[opener]! });
          if (newest.length > READ_THROUGH) newest.shift();
        }
      }
    } catch (err) {
      report.faults.push({
        key: `${cluster}/wal/`,
        target: target.location,
        problem: `cannot check the WAL objects in ${target.location}: ${errorMessage(err)}`,
      });
      continue;
    }
    for (const segment of newest) {
      try {
        const decoded = await openWalObject(target, segment.key, segment.file, segment.codec);
        const chunks: Buffer[] = [];
        let size = 0;
        for await (const chunk of decoded) {
          if (size < 64) chunks.push(chunk as Buffer);
          size += (chunk as Buffer).length;
        }
        const problem = decodedFileProblem(segment.file, size, Buffer.concat(chunks), identity);
        if (problem !== undefined) throw new Error(problem);
        report.readThrough++;
      } catch (err) {
        report.faults.push({
          key: segment.key,
          target: target.location,
          problem: `WAL object ${segment.key} in ${target.location} does not read through: ${errorMessage(err)}`,
        });
      }
    }
  }
  return report;
}
