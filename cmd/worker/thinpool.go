package main

import (
	"context"
	"time"

	"github.com/libvirt-volume-provisioner/provisioner/volume/lvm"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/libvirt-volume-provisioner/provisioner/volume"
)

// logClones says how volumes are clones, and for a thin pool finishes the
// swaps of volumes a stop interrupted.
func logClones(ctx context.Context, log *logrus.Logger, backend volume.Backend, where string) {
	lb, ok := backend.(*lvm.Backend)
	if !ok {
		log.WithField("volumes", where).Info("volumes are reflink clones of a golden per image")
		return
	}
	l := log.WithField("thin_pool", lb.PoolName())
	l.Info("volumes are thin snapshots of a golden thin LV per image")
	sum, err := lb.ReconcileThin(ctx)
	switch {
	case err != nil:
		l.WithError(err).Warn("could not tidy the LVs interrupted volume replacements left")
	case sum.Completed+sum.Removed > 0:
		l.WithFields(logrus.Fields{"completed": sum.Completed, "removed": sum.Removed}).Warn("finished or undid volume replacements a stop interrupted")
	}
}

// thinPoolCollector exports how full the lvm backend's thin pool is, read
// with lvs at each scrape.
type thinPoolCollector struct {
	b                                  *lvm.Backend
	dataUsed, metaUsed, dataSize, meta *prometheus.Desc
	up                                 *prometheus.Desc
}

func newThinPoolCollector(b *lvm.Backend) *thinPoolCollector {
	labels := prometheus.Labels{"pool": b.PoolName()}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc("libvirt_volume_provisioner_lvm_thinpool_"+name, help, nil, labels)
	}
	return &thinPoolCollector{b: b,
		dataUsed: desc("data_used_ratio", "Share of the thin pool's data space in use (lvs data_percent / 100)."),
		metaUsed: desc("metadata_used_ratio", "Share of the thin pool's metadata space in use (lvs metadata_percent / 100)."),
		dataSize: desc("data_size_bytes", "Size of the thin pool's data space."),
		meta:     desc("metadata_size_bytes", "Size of the thin pool's metadata space."),
		up:       desc("up", "1 when lvs reported the thin pool at this scrape, 0 when it could not."),
	}
}

func (c *thinPoolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.dataUsed, c.metaUsed, c.dataSize, c.meta, c.up} {
		ch <- d
	}
}

func (c *thinPoolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, err := c.b.ThinPoolUsage(ctx)
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(c.dataUsed, prometheus.GaugeValue, u.DataUsed)
	ch <- prometheus.MustNewConstMetric(c.metaUsed, prometheus.GaugeValue, u.MetadataUsed)
	ch <- prometheus.MustNewConstMetric(c.dataSize, prometheus.GaugeValue, float64(u.DataBytes))
	ch <- prometheus.MustNewConstMetric(c.meta, prometheus.GaugeValue, float64(u.MetadataBytes))
}
