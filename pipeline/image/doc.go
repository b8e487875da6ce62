// Package image inspects an image before anything is written: its format
// (qcow2 or raw, checked against what the job declared) and virtual size,
// and the qcow2 header's checks (version, no backing file, no external data
// file, no encryption, a size within MaxVirtualSize). InspectStream reads
// the header of an image still downloading. Parsing stays apart from
// copying, which is the convert package's.
package image
