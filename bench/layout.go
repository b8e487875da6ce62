package main

import (
	"encoding/binary"
	"fmt"
	"os"
	"slices"
)

// layout says how far a qcow2 file's order follows its guest order, which
// decides how early a conversion that reads the file while it downloads
// can write: for each data cluster in guest order, the file offset up to
// which the download must have arrived before it (and every cluster before
// it, and the L1/L2 tables that map them) can be read.
type layout struct {
	clusters  int       // data clusters (allocated, not zero)
	backwards int       // data clusters that end before an earlier one in guest order
	farthest  int64     // the most bytes such a cluster ends before the farthest earlier one
	at        []float64 // share of the guest data convertible in guest order at 25, 50, 75 % of the file
}

func (l layout) String() string {
	return fmt.Sprintf("%d data clusters, %d (%.1f %%) lie before the previous one in the file, at most %.1f MiB behind; with 25/50/75 %% of the file downloaded, %.0f/%.0f/%.0f %% of the data is readable in guest order",
		l.clusters, l.backwards, 100*float64(l.backwards)/float64(max(1, l.clusters)), float64(l.farthest)/(1<<20), 100*l.at[0], 100*l.at[1], 100*l.at[2])
}

// qcowLayout reads path's L1 and L2 tables (qcow2 version 2 or 3, standard
// 8-byte L2 entries).
func qcowLayout(path string) (layout, error) {
	f, err := os.Open(path)
	if err != nil {
		return layout{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return layout{}, err
	}
	hdr := make([]byte, 104)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return layout{}, err
	}
	be := binary.BigEndian
	if string(hdr[:4]) != "QFI\xfb" {
		return layout{}, fmt.Errorf("%s: not qcow2", path)
	}
	if be.Uint32(hdr[4:]) >= 3 && be.Uint64(hdr[72:])&(1<<4) != 0 {
		return layout{}, fmt.Errorf("%s: extended L2 entries are not handled", path)
	}
	bits := be.Uint32(hdr[20:])
	csize := int64(1) << bits
	l1n := int64(be.Uint32(hdr[36:]))
	l1off := int64(be.Uint64(hdr[40:]))
	l1 := make([]byte, l1n*8)
	if _, err := f.ReadAt(l1, l1off); err != nil {
		return layout{}, fmt.Errorf("L1 table: %w", err)
	}
	const offMask = 0x00fffffffffffe00
	x := 62 - (bits - 8)
	need := l1off + l1n*8 // bytes that must have arrived, in guest order so far
	var ends []int64      // per data cluster in guest order: the prefix needed
	var l layout
	l2 := make([]byte, csize)
	prevEnd := int64(0)
	for i := range l1n {
		l2off := int64(be.Uint64(l1[i*8:]) & offMask)
		if l2off == 0 {
			continue
		}
		if _, err := f.ReadAt(l2, l2off); err != nil {
			return layout{}, fmt.Errorf("L2 table at %d: %w", l2off, err)
		}
		need = max(need, l2off+csize)
		for j := int64(0); j < csize/8; j++ {
			e := be.Uint64(l2[j*8:])
			var end int64
			switch {
			case e&(1<<62) != 0: // compressed
				off := int64(e & (1<<x - 1))
				sectors := int64((e>>x)&(1<<(bits-8)-1)) + 1
				end = off&^511 + sectors*512
			case e&offMask != 0 && e&1 == 0:
				end = int64(e&offMask) + csize
			default:
				continue // unallocated or zero
			}
			end = min(end, st.Size())
			l.clusters++
			if end < prevEnd {
				l.backwards++
			}
			prevEnd = end
			if need > end {
				l.farthest = max(l.farthest, need-end)
			}
			need = max(need, end)
			ends = append(ends, need)
		}
	}
	for _, frac := range []float64{0.25, 0.5, 0.75} {
		arrived := int64(frac * float64(st.Size()))
		n, _ := slices.BinarySearch(ends, arrived+1) // ends is non-decreasing
		l.at = append(l.at, float64(n)/float64(max(1, len(ends))))
	}
	return l, nil
}
