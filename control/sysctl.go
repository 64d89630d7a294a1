package control

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/nsappliance/appliance/netstack"
)

// SysctlValue is the body of a sysctl write.
type SysctlValue struct {
	Value string `json:"value"`
}

// HandleSysctl registers GET /v1/sysctl, GET /v1/sysctl/{key} and
// PUT /v1/sysctl/{key} on mux.
func HandleSysctl(mux *http.ServeMux, y *netstack.Sysctls) {
	mux.HandleFunc("GET /v1/sysctl", func(w http.ResponseWriter, r *http.Request) {
		all, err := y.All()
		if err != nil {
			WriteError(w, http.StatusInternalServerError, err)
			return
		}
		WriteJSON(w, http.StatusOK, all)
	})
	mux.HandleFunc("GET /v1/sysctl/{key}", func(w http.ResponseWriter, r *http.Request) {
		k := r.PathValue("key")
		v, err := y.Get(k)
		if err != nil {
			WriteError(w, sysctlStatus(err), err)
			return
		}
		WriteJSON(w, http.StatusOK, netstack.KV{Key: k, Value: v})
	})
	mux.HandleFunc("PUT /v1/sysctl/{key}", func(w http.ResponseWriter, r *http.Request) {
		k := r.PathValue("key")
		var in SysctlValue
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&in); err != nil {
			WriteError(w, http.StatusBadRequest, err)
			return
		}
		if err := y.Set(k, in.Value); err != nil {
			WriteError(w, sysctlStatus(err), err)
			return
		}
		v, _ := y.Get(k)
		WriteJSON(w, http.StatusOK, netstack.KV{Key: k, Value: v})
	})
}

func sysctlStatus(err error) int {
	switch {
	case errors.Is(err, netstack.ErrUnknownSysctl):
		return http.StatusNotFound
	case errors.Is(err, netstack.ErrReadOnly):
		return http.StatusForbidden
	}
	return http.StatusBadRequest
}
