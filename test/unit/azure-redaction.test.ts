import { describe, expect, it } from 'vitest';
import { commandFailedAlert } from '../../core/alert/failure';
import { redactAlert } from '../../core/alert/notify';
import { parseConfig } from '../../core/config';

/** Azure's secrets never leave the machine in an alert, whichever way they were given. */
describe('Azure secrets in alerts', () => {
  const KEY = 'QXp1cmVBY2NvdW50S2V5U2VjcmV0VmFsdWU=';
  const SAS = 'sv=2024-11-04&ss=b&srt=sco&sp=rwdlc&se=2027-01-01&sig=c2lnbmF0dXJlLXNlY3JldA%3D';

  it.each([
    ['AZURE_STORAGE_KEY', { AZURE_STORAGE_ACCOUNT: 'acct', AZURE_STORAGE_KEY: KEY }, KEY],
    ['AZURE_STORAGE_SAS_TOKEN', { AZURE_STORAGE_ACCOUNT: 'acct', AZURE_STORAGE_SAS_TOKEN: SAS }, SAS],
    [
      'the key inside AZURE_STORAGE_CONNECTION_STRING',
      {
        AZURE_STORAGE_CONNECTION_STRING: `DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=${KEY}`,
      },
      KEY,
    ],
  ])('redacts %s', (_, settings, secret) => {
    // Prepare
    const config = parseConfig({
      BACKUP_DIR: '/b',
      CLOUD_PROVIDER: 'azure',
      CLOUD_BUCKET: 'c',
      ...settings,
    });
    const alert = commandFailedAlert({
      cluster: 'main',
      commandPath: 'backup full',
      argv: ['backup', 'full'],
      error: new Error(`upload failed, credential ${secret} refused`),
      startedAt: new Date(),
    });

    // Act
    const redacted = redactAlert(alert, config);

    // Assess
    expect(JSON.stringify(alert)).toContain(secret);
    expect(JSON.stringify(redacted)).not.toContain(secret);
    expect(redacted.what).toContain('credential *** refused');
  });
});
