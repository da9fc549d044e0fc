import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
    // Integration tests start real PostgreSQL clusters and servers; two cores, so keep it modest.
    maxWorkers: 2,
    pool: 'forks',
    // The AWS SDK's Node 20 notice is printed once per process; the README states supported versions.
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
  },
});
