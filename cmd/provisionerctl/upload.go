package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/libvirt-volume-provisioner/provisioner/client"
	"github.com/libvirt-volume-provisioner/provisioner/rest"
)

// cloudInitFlags are submit's cloud-init documents, read from files.
type cloudInitFlags struct {
	userData, metaData, networkConfig, vendorData, seedVolume string
}

func (c *cloudInitFlags) register(f *pflag.FlagSet) {
	f.StringVar(&c.userData, "user-data", "", "cloud-init user-data file: also write a NoCloud seed volume (label cidata) holding it")
	f.StringVar(&c.metaData, "meta-data", "", "cloud-init meta-data file (default: instance-id: <job id>)")
	f.StringVar(&c.networkConfig, "network-config", "", "cloud-init network-config file")
	f.StringVar(&c.vendorData, "vendor-data", "", "cloud-init vendor-data file")
	f.StringVar(&c.seedVolume, "seed-volume", "", "the seed volume's name (default: <volume>-seed)")
}

// load reads the files named; nil when none was.
func (c *cloudInitFlags) load() (*rest.CloudInit, error) {
	if c.userData == "" && c.metaData == "" && c.networkConfig == "" && c.vendorData == "" && c.seedVolume == "" {
		return nil, nil
	}
	ci := &rest.CloudInit{VolumeName: c.seedVolume}
	for _, f := range []struct {
		path string
		dst  *string
	}{{c.userData, &ci.UserData}, {c.metaData, &ci.MetaData}, {c.networkConfig, &ci.NetworkConfig}, {c.vendorData, &ci.VendorData}} {
		if f.path == "" {
			continue
		}
		data, err := os.ReadFile(f.path)
		if err != nil {
			return nil, usagef("%v", err)
		}
		*f.dst = string(data)
	}
	return ci, nil
}

func (a *app) uploadCommand() *cobra.Command {
	var (
		volume, file, sum, correlation, idemKey string
		size                                    int64
		wait                                    bool
	)
	cmd := &cobra.Command{
		Use:   "upload --volume NAME --file PATH --hypervisor HOST [--wait]",
		Short: "Write a file (a cloud-init ISO, a raw disk, any bytes) into a volume on a host",
		Example: `  provisionerctl upload --hypervisor hv-1 --volume vm-1-seed --file seed.iso --wait
  provisionerctl upload --hypervisor hv-1 --volume vm-2-root --file disk.raw --size 20 --sha256 $(sha256sum disk.raw | cut -c1-64)`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case volume == "" || file == "":
				return usagef("--volume and --file are required")
			case a.hypervisor == "":
				return usagef("--hypervisor (or PROVISIONER_HYPERVISOR) is required: an upload names its host")
			}
			f, err := os.Open(file)
			if err != nil {
				return usagef("%v", err)
			}
			defer f.Close()
			st, err := f.Stat()
			if err != nil {
				return err
			}
			c, err := a.client()
			if err != nil {
				return err
			}
			var opts []client.SubmitOption
			if idemKey != "" {
				opts = append(opts, client.WithIdempotencyKey(idemKey))
			}
			sub, err := c.UploadContent(cmd.Context(), client.Upload{Hypervisor: a.hypervisor, Volume: volume, Body: f, Size: st.Size(),
				SHA256: sum, VolumeSizeGB: size, CorrelationID: correlation}, opts...)
			if err != nil {
				return fmt.Errorf("upload to volume %s: %w", volume, err)
			}
			return a.accepted(cmd.Context(), c, []tracked{{jobID: sub.JobID, label: volume}}, wait)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&volume, "volume", "", "volume name (required)")
	fl.StringVar(&file, "file", "", "the file to write (required)")
	fl.StringVar(&sum, "sha256", "", "the file's SHA-256 in hex, checked by the API and the worker (default: computed here)")
	fl.Int64Var(&size, "size", 0, "size in GiB of a new volume (default: the file's, rounded up to a MiB; an existing volume is reused if it fits)")
	fl.StringVar(&correlation, "correlation-id", "", "your reference, kept on the job")
	fl.StringVar(&idemKey, "idempotency-key", "", "Idempotency-Key: repeating the command with it returns the same job")
	fl.BoolVar(&wait, "wait", false, "follow the job until it ends; exit 1 if it fails")
	return cmd
}
