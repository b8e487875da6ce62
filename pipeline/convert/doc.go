// Package convert writes an inspected image into a volume: Native reads
// qcow2 clusters itself (decompressing them in parallel, writing only data,
// optionally hashing the golden content as it goes) from a file or from a
// download still arriving; QemuImg runs qemu-img convert and check; raw
// images are copied. It also zeroes a volume's ends, zero-fills a volume,
// and measures an image's data for the space check. It sees the image only
// through io.ReaderAt and the volume only as a path.
package convert
