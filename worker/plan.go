package worker

import (
	"context"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/kvstate"
	"github.com/libvirt-volume-provisioner/provisioner/messaging"
	"github.com/libvirt-volume-provisioner/provisioner/pipeline"
)

// executeImage runs the image job m's plan (pipeline.Plan): the worker
// gives it its parts, its reporter, and the volume's lease, which the job's
// keepalive renews.
func (w *Worker) executeImage(ctx context.Context, rep *reporter, rec kvstate.Job, m messaging.Job, lease *leaseRenewer) (result, error) {
	res, err := w.imagePlan(rep, rec, m, lease).Run(ctx)
	return result{Result: res}, err
}

// imagePlan is the plan of the image job m, whose record is rec.
func (w *Worker) imagePlan(rep *reporter, rec kvstate.Job, m messaging.Job, lease *leaseRenewer) *pipeline.Plan {
	return &pipeline.Plan{
		Parts: w.parts, Space: &w.space, Report: planReporter{rep},
		Lock: func(ctx context.Context, volume string) (func(), error) {
			return w.lockVolume(ctx, rec, volume, lease)
		},
		Job: m, VolumeCreated: rec.VolumeCreated,
		ImageBuckets: w.cfg.ImageBuckets, VolumeAllowed: w.volumeAllowed,
	}
}

// lockVolume takes the lease of volume for rec's attempt and has lease
// renew it until unlock releases it; unlock is never nil.
func (w *Worker) lockVolume(ctx context.Context, rec kvstate.Job, volume string, lease *leaseRenewer) (unlock func(), err error) {
	held, err := w.leases.Acquire(ctx, rec.Hypervisor, volume, rec.JobID, w.cfg.AckWait)
	if err != nil {
		return func() {}, err
	}
	lease.add(held)
	return func() {
		lease.remove(held)
		// Short: a worker cut off from NATS must not wait here; an
		// unreleased lease expires after the ack wait anyway.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		_ = held.Release(rctx)
	}, nil
}

// planReporter is the job's reporter as its plan reports to it.
type planReporter struct{ r *reporter }

func (p planReporter) Progress(stage string, done, total int64) { p.r.progress(stage, done, total) }
func (p planReporter) CountOnly(stage string, done int64)       { p.r.countOnly(stage, done) }
func (p planReporter) SetCache(hit bool, path, checksum string) { p.r.setCache(hit, path, checksum) }
func (p planReporter) RecordImage(path, checksum string)        { p.r.recordImage(path, checksum) }
func (p planReporter) Log() *logrus.Entry                       { return p.r.log }
func (p planReporter) MarkVolumeCreated(ctx context.Context) error {
	return p.r.markVolumeCreated(ctx)
}
