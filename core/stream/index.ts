export {
  type CompressionDirection,
  type CompressionOptions,
  compressFile,
  compressFiles,
  compressionExtension,
  compressionFromExtension,
  compressionInvocation,
  compressionTool,
  compressStage,
  decompressStage,
  decompressToFileStage,
  type FileCompressor,
  type ToolInvocation,
  toolVersion,
} from './compress';
export { descriptorWriteStream } from './descriptor';
export { Coalesce, DigestMeter, type DigestMeterOptions, gateOn, teeTo } from './digest';
export {
  decryptStage,
  deriveManifestKey,
  deriveWalPassphrase,
  encryptStage,
  hmacHex,
  keyCheckHex,
  timingSafeEqualHex,
} from './encrypt';
export {
  isOnPath,
  type StartToolOptions,
  startTool,
  ToolExitError,
  type ToolProcess,
  type ToolStageDuplex,
  type ToolStageOptions,
  toolStage,
} from './process';
export { type FrameSink, ZstdFileReports, ZstdFrameSplitter } from './zstd-frames';
