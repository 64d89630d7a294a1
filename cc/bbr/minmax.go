package bbr

// minmax is Kathleen Nichols' windowed min/max filter as in Linux's
// lib/win_minmax.c (struct minmax): it keeps the best, second best and
// third best samples of the window so that an expiring maximum is replaced
// by the next best one without storing every sample. BBR runs it over
// packet-timed round counts (bbr_update_bw), so t is a round number.
type minmax struct {
	s [3]minmaxSample
}

type minmaxSample struct {
	t uint32 // time the sample was taken (here: round count)
	v uint32 // the value
}

// get returns the current windowed maximum (Linux: minmax_get).
func (m *minmax) get() uint32 { return m.s[0].v }

// reset forgets every earlier sample (Linux: minmax_reset).
func (m *minmax) reset(t, meas uint32) uint32 {
	v := minmaxSample{t: t, v: meas}
	m.s = [3]minmaxSample{v, v, v}
	return meas
}

// subwinUpdate keeps the three samples spread over the window (Linux:
// minmax_subwin_update).
func (m *minmax) subwinUpdate(win uint32, val minmaxSample) uint32 {
	dt := val.t - m.s[0].t
	switch {
	case dt > win:
		// The whole window passed without a new max: promote the second
		// and third choices. The second choice may also be outside the
		// window (the third was checked on entry), so maybe twice.
		m.s[0], m.s[1], m.s[2] = m.s[1], m.s[2], val
		if val.t-m.s[0].t > win {
			m.s[0], m.s[1], m.s[2] = m.s[1], m.s[2], val
		}
	case m.s[1].t == m.s[0].t && dt > win/4:
		// A quarter of the window passed without a new max: take a second
		// choice from the second quarter.
		m.s[1], m.s[2] = val, val
	case m.s[2].t == m.s[1].t && dt > win/2:
		// Half the window passed: take a third choice from the last half.
		m.s[2] = val
	}
	return m.s[0].v
}

// runningMax adds a sample at time t and returns the maximum over the last
// win time units (Linux: minmax_running_max).
func (m *minmax) runningMax(win, t, meas uint32) uint32 {
	val := minmaxSample{t: t, v: meas}
	if val.v >= m.s[0].v || val.t-m.s[2].t > win {
		// A new max, or nothing left in the window: forget the rest.
		return m.reset(t, meas)
	}
	if val.v >= m.s[1].v {
		m.s[1], m.s[2] = val, val
	} else if val.v >= m.s[2].v {
		m.s[2] = val
	}
	return m.subwinUpdate(win, val)
}
