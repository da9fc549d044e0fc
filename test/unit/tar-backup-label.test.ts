import { describe, expect, it } from 'vitest';
import { parseBackupLabel, parseWalRanges } from '../../core/pg/tar';

describe('parseBackupLabel', () => {
  it('reads what PostgreSQL 15 writes', () => {
    const label = parseBackupLabel(
      [
        'START WAL LOCATION: 0/2000028 (file 000000010000000000000002)',
        'CHECKPOINT LOCATION: 0/2000060',
        'BACKUP METHOD: streamed',
        'BACKUP FROM: standby',
        'START TIME: 2026-11-24 09:42:56 UTC',
        'LABEL: pg_basebackup base backup',
        'START TIMELINE: 3',
        '',
      ].join('\n'),
    );
    expect(label).toEqual({
      startLsn: '0/2000028',
      startWal: '000000010000000000000002',
      checkpointLsn: '0/2000060',
      startTimeline: 3,
      backupFrom: 'standby',
      startTime: '2026-11-24 09:42:56 UTC',
    });
  });

  it('returns undefined when a required line is missing', () => {
    expect(parseBackupLabel('CHECKPOINT LOCATION: 0/2000060\nSTART TIMELINE: 1\n')).toBeUndefined();
  });
});

describe('parseWalRanges', () => {
  it('reads one range from the tail of a manifest', () => {
    const tail =
      '"Checksum": "00000000" }\n],\n"WAL-Ranges": [\n{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }\n],\n"Manifest-Checksum": "cc3b"}\n';
    expect(parseWalRanges(tail)).toEqual([{ timeline: 1, startLsn: '0/2000028', endLsn: '0/2000100' }]);
  });

  it('reads every range of a standby promoted during the backup (PostgreSQL lists the newest first)', () => {
    const tail = `"WAL-Ranges": [
{ "Timeline": 3, "Start-LSN": "1/A3000000", "End-LSN": "1/a4000100" },
{ "Timeline": 2, "Start-LSN": "1/A0000028", "End-LSN": "1/A3000000" }
],`;
    expect(parseWalRanges(tail)).toEqual([
      { timeline: 3, startLsn: '1/A3000000', endLsn: '1/A4000100' },
      { timeline: 2, startLsn: '1/A0000028', endLsn: '1/A3000000' },
    ]);
  });

  it('returns undefined without the section (a tail cut too short, or no manifest)', () => {
    expect(parseWalRanges('"Files": [ ]')).toBeUndefined();
    expect(parseWalRanges('"WAL-Ranges": [ { "Timeline": 1, "Start-LSN": "0/1"')).toBeUndefined();
  });
});
