// Package stages names the stages of a job, as its progress reports them
// (the record's stage, the progress events, the stage metrics), and the
// callback that receives a stage's progress.
package stages

// Stage names reported in progress, in the order a job passes them.
const (
	Checksum   = "checksum"
	CacheCheck = "cache_lookup"
	Download   = "downloading"
	Verify     = "verifying"
	Inspect    = "inspecting"
	Volume     = "creating_volume"
	Populate   = "populating"
	Finalize   = "finalizing"
	// Seed writes a job's cloud-init seed volume (after the image).
	Seed = "writing_seed"
)

// ProgressFunc receives a stage's progress: done of total bytes (total 0
// when unknown). Calls are frequent; receivers rate-limit themselves.
type ProgressFunc func(stage string, done, total int64)
