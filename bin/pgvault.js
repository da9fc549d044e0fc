#!/usr/bin/env node
'use strict';
// The AWS SDK prints a multi-line Node 20 support notice on first use; under archive_command it
// would land in PostgreSQL's log once per segment. The README states the Node versions instead.
if (process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED === undefined) {
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED = 'true';
}
require('../dist/cli/main.js');
