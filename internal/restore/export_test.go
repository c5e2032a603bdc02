package restore

// SyncFS lets tests watch (and fail) the flush of each filesystem.
var SyncFS = &syncFS
