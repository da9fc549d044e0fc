export * from './archive';
export * from './cluster';
export * from './server';
export * from './tools';
