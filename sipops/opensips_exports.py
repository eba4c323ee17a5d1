"""What OpenSIPS 3.4 and 3.6 export to the script: core functions, module functions and modparams.

sipops' own table for the structural lint (sipops.lint), limited to the modules our templates and
common production cfgs load. It was read from the cmd_export_t / param_export_t arrays of the
3.4.18 and 3.6.8 sources (modules/*/ and net/proto_*/, core_cmds.c); only script-callable
functions are listed, async ones (acmd_export_t, called inside async()) included. An entry valid
in one release only carries that release ("3.6"). Each function is (min args, max args[, only release]).
Every other module's exports are generated from the same sources by tools/gen_opensips_exports.py
into sipops/data/opensips_exports.json; for the modules below, this table wins.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Export = tuple[int, int] | tuple[int, int, str]


@dataclass(frozen=True)
class ModuleExports:
    functions: dict[str, Export]
    params: dict[str, str] = field(default_factory=dict)  # name -> "" (both releases) or the one release


def _params(*names: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for n in names:
        name, _, only = n.partition("@")
        out[name] = only
    return out


# fmt: off
# Statements of the script grammar (cfg.lex) that look like function calls but are not exports.
KEYWORDS = frozenset(
    {
        "if", "else", "switch", "case", "default", "while", "for", "in", "return", "exit", "drop", "break",
        "route", "xlog", "xdbg", "log", "error", "assert", "async", "launch", "sync", "send_tcp", "not", "and", "or",
    }
)

CORE_FUNCTIONS: dict[str, Export] = {
    "add_blacklist_rule": (2, 6), "add_local_rport": (0, 0), "append_branch": (0, 2, '3.4'),
    "append_branch_old": (0, 2, '3.6'), "append_msg_branch": (1, 3, '3.6'), "avp_print": (0, 0, '3.6'),
    "cache_add": (4, 5), "cache_counter_fetch": (3, 3), "cache_fetch": (3, 3), "cache_raw_query": (2, 3),
    "cache_remove": (2, 2), "cache_store": (3, 4), "cache_sub": (4, 5), "check_blacklist_rule": (2, 5),
    "construct_uri": (6, 6), "del_blacklist_rule": (2, 5), "force_rport": (0, 0), "force_send_socket": (1, 1),
    "force_tcp_alias": (0, 1), "forward": (0, 1), "get_timestamp": (2, 2), "is_myself": (1, 2), "isbflagset": (1, 2),
    "isdsturiset": (0, 0), "isflagset": (1, 1), "move_msg_branch": (0, 3, '3.6'), "next_branches": (0, 0),
    "prefix": (1, 1), "pv_printf": (2, 2), "raise_event": (1, 3), "remove_branch": (1, 1, '3.4'),
    "remove_msg_branch": (1, 1, '3.6'), "resetbflag": (1, 2), "resetdsturi": (0, 0), "resetflag": (1, 1),
    "revert_uri": (0, 0), "script_trace": (0, 3), "send": (1, 2), "serialize_branches": (1, 2),
    "set_advertised_address": (1, 1), "set_advertised_port": (1, 1), "set_via_handling": (1, 1, '3.6'),
    "setbflag": (1, 2), "setdsturi": (1, 1), "setflag": (1, 1), "sethost": (1, 1), "sethostport": (1, 1),
    "setport": (1, 1), "seturi": (1, 1), "setuser": (1, 1), "setuserpass": (1, 1), "sr_check_status": (1, 2),
    "strip": (1, 1), "strip_tail": (1, 1), "subscribe_event": (2, 3), "swap_msg_branches": (0, 2, '3.6'),
    "unuse_blacklist": (1, 1), "use_blacklist": (1, 1),
}

MODULES: dict[str, ModuleExports] = {
    "signaling": ModuleExports(
        functions={
            "send_reply": (2, 2),
        },
        params=_params(),
    ),
    "sl": ModuleExports(
        functions={
            "sl_reply_error": (0, 0), "sl_send_reply": (2, 2),
        },
        params=_params(
            "enable_stats",
        ),
    ),
    "tm": ModuleExports(
        functions={
            "t_add_cancel_reason": (1, 1), "t_add_hdrs": (1, 1), "t_anycast_replicate": (0, 0),
            "t_cancel_branch": (0, 1), "t_check_status": (1, 1), "t_check_trans": (0, 0), "t_flush_flags": (0, 0),
            "t_get_branch_idx_by_attr": (1, 5, '3.6'), "t_inject_branches": (1, 2), "t_local_replied": (1, 1),
            "t_new_request": (4, 6), "t_newtran": (0, 0), "t_on_branch": (1, 1), "t_on_failure": (1, 1),
            "t_on_reply": (1, 1), "t_relay": (0, 2), "t_replicate": (1, 2), "t_reply": (2, 2),
            "t_reply_by_callid": (2, 4), "t_reply_with_body": (3, 3), "t_wait_for_new_branches": (0, 1),
            "t_wait_no_more_branches": (0, 0), "t_was_cancelled": (0, 0), "t_write_req": (2, 2),
            "t_write_unix": (2, 2),
        },
        params=_params(
            "T1_timer", "T2_timer", "auto_100trying", "cluster_auto_cancel", "cluster_param", "delete_timer",
            "disable_6xx_block", "enable_stats", "fr_inv_timeout", "fr_timeout", "local_reply_route@3.6",
            "local_request_route@3.6", "minor_branch_flag", "onreply_avp_mode", "pass_provisional_replies",
            "restart_fr_on_each_reply", "ruri_matching", "syn_branch", "timer_partitions", "tm_replication_cluster",
            "tw_append", "unix_tx_timeout", "via1_matching", "wt_timer",
        ),
    ),
    "rr": ModuleExports(
        functions={
            "add_rr_param": (1, 1), "check_route_param": (1, 1), "is_direction": (1, 1), "loose_route": (0, 0),
            "record_route": (0, 1), "record_route_preset": (1, 2),
        },
        params=_params(
            "add_username", "append_fromtag", "enable_double_rr", "enable_socket_mismatch_warning", "ignore_user",
        ),
    ),
    "maxfwd": ModuleExports(
        functions={
            "is_maxfwd_lt": (1, 1), "mf_process_maxfwd_header": (1, 1),
        },
        params=_params(
            "max_limit",
        ),
    ),
    "sipmsgops": ModuleExports(
        functions={
            "add_body_part": (2, 3), "append_body_to_reply": (1, 1, '3.6'), "append_hf": (1, 2),
            "append_time": (0, 0), "append_to_reply": (1, 1), "append_urihf": (2, 2), "change_reply_status": (2, 2),
            "codec_delete": (1, 2), "codec_delete_except_re": (1, 1), "codec_delete_re": (1, 1),
            "codec_exists": (1, 2), "codec_exists_re": (1, 1), "codec_move_down": (1, 2),
            "codec_move_down_re": (1, 1), "codec_move_up": (1, 2), "codec_move_up_re": (1, 1),
            "get_glob_headers_values": (3, 3), "get_updated_body_part": (2, 2), "has_body": (0, 1),
            "has_body_part": (0, 1), "has_totag": (0, 0), "insert_hf": (1, 2), "is_audio_on_hold": (0, 0),
            "is_method": (1, 1), "is_present_hf": (1, 1), "is_privacy": (1, 1), "is_uri_user_e164": (1, 1),
            "list_hdr_add_option": (2, 2), "list_hdr_has_option": (2, 2), "list_hdr_remove_option": (2, 2),
            "remove_body_part": (0, 2), "remove_hf": (1, 1), "remove_hf_glob": (1, 1), "remove_hf_re": (1, 1),
            "ruri_add_param": (1, 1), "ruri_del_param": (1, 1), "ruri_has_param": (1, 2), "ruri_tel2sip": (0, 0),
            "sip_to_json": (1, 1, '3.6'), "sipmsg_validate": (0, 2), "stream_delete": (1, 2),
            "stream_exists": (1, 2),
        },
        params=_params(),
    ),
    "textops": ModuleExports(
        functions={
            "replace": (2, 2), "replace_all": (2, 2), "replace_body": (2, 2), "replace_body_all": (2, 2),
            "replace_body_atonce": (2, 2), "search": (1, 1), "search_append": (2, 2), "search_append_body": (2, 2),
            "search_body": (1, 1), "subst": (1, 1), "subst_body": (1, 1), "subst_uri": (1, 1), "subst_user": (1, 1),
        },
        params=_params(),
    ),
    "httpd": ModuleExports(
        functions={

        },
        params=_params(
            "buf_size", "conn_timeout@3.6", "ip", "port", "post_buf_size", "receive_buf_size@3.6", "tls_cert_file",
            "tls_ciphers", "tls_key_file",
        ),
    ),
    "mi_http": ModuleExports(
        functions={

        },
        params=_params(
            "pretty_printing", "root", "trace_bwlist", "trace_destination",
        ),
    ),
    "mi_fifo": ModuleExports(
        functions={

        },
        params=_params(
            "fifo_group", "fifo_mode", "fifo_name", "fifo_user", "pretty_printing", "reply_dir", "trace_bwlist",
            "trace_destination",
        ),
    ),
    "proto_udp": ModuleExports(
        functions={

        },
        params=_params(
            "udp_port",
        ),
    ),
    "proto_tcp": ModuleExports(
        functions={

        },
        params=_params(
            "tcp_async", "tcp_async_local_connect_timeout", "tcp_async_local_write_timeout",
            "tcp_async_max_postponed_chunks", "tcp_crlf_drop", "tcp_crlf_pingpong", "tcp_max_msg_chunks",
            "tcp_parallel_handling", "tcp_port", "tcp_send_timeout", "trace_destination", "trace_filter_route",
            "trace_on",
        ),
    ),
    "usrloc": ModuleExports(
        functions={
            "ul_add_key": (3, 4, '3.6'), "ul_del_key": (3, 3, '3.6'), "ul_get_key": (4, 4, '3.6'),
        },
        params=_params(
            "attr_column", "cachedb_url", "callid_column", "cflags_column", "cluster_mode", "contact_column",
            "contact_id_column", "contact_refresh_timer", "cseq_column", "cseq_delay", "db_mode", "db_url",
            "desc_time_order", "domain_column", "expires_column", "flags_column", "ha_cluster@3.6", "ha_shtag@3.6",
            "hash_size", "kv_store_column", "latency_event_min_us", "latency_event_min_us_delta", "location_cluster",
            "matching_mode", "max_contact_delete", "methods_column", "mi_dump_kv_store", "nat_bflag", "path_column",
            "pinging_mode", "q_column", "received_column", "regen_broken_contactid", "restart_persistency",
            "shared_pinging", "sip_instance_column", "skip_replicated_db_ops", "socket_column", "sql_write_mode",
            "timer_interval", "use_domain", "user_agent_column", "user_column", "working_mode_preset",
        ),
    ),
    "registrar": ModuleExports(
        functions={
            "add_sock_hdr": (1, 1), "is_contact_registered": (1, 4), "is_ip_registered": (3, 4),
            "is_registered": (1, 2), "lookup": (1, 3), "pn_process_purr": (1, 1), "remove": (2, 6),
            "remove_ip_port": (3, 4), "save": (1, 4),
        },
        params=_params(
            "allow_dup_cseq", "attr_avp", "case_sensitive", "default_expires", "default_q", "disable_gruu",
            "expires_max_deviation", "gruu_secret", "max_aor_len", "max_contact_len", "max_contacts",
            "max_domain_len", "max_expires", "max_username_len", "mcontact_avp", "min_expires", "pn_ct_match_params",
            "pn_enable", "pn_enable_purr", "pn_pnsreg_interval", "pn_providers", "pn_refresh_timeout",
            "pn_skip_pn_interval", "pn_trigger_interval", "realm_prefix", "received_avp", "received_param",
            "retry_after", "sock_hdr_name", "tcp_persistent_flag",
        ),
    ),
    "auth": ModuleExports(
        functions={
            "append_rpid_hf": (0, 2), "consume_credentials": (0, 0), "is_rpid_user_e164": (0, 0),
            "proxy_challenge": (1, 3), "pv_proxy_authorize": (1, 1), "pv_www_authorize": (1, 1),
            "www_challenge": (1, 3),
        },
        params=_params(
            "calculate_ha1", "disable_nonce_check", "nonce_expire", "password_spec", "realm_prefix", "rpid_avp",
            "rpid_prefix", "rpid_suffix", "secret", "username_spec",
        ),
    ),
    "auth_db": ModuleExports(
        functions={
            "db_does_uri_exist": (2, 2), "db_get_auth_id": (4, 4), "db_is_from_authorized": (1, 1),
            "db_is_to_authorized": (1, 1), "proxy_authorize": (2, 2), "www_authorize": (2, 2),
        },
        params=_params(
            "calculate_ha1", "db_url", "domain_column", "hash_column_sha256", "hash_column_sha512t256",
            "load_credentials", "password_column", "skip_version_check", "uri_domain_column", "uri_uriuser_column",
            "uri_user_column", "use_domain", "user_column",
        ),
    ),
    "nathelper": ModuleExports(
        functions={
            "add_rcv_param": (0, 1), "fix_nated_contact": (0, 1), "fix_nated_register": (0, 0),
            "fix_nated_sdp": (1, 3), "nat_uac_test": (1, 1),
        },
        params=_params(
            "cluster_id", "cluster_sharing_tag", "force_socket", "max_pings_lost", "natping_interval",
            "natping_partitions", "natping_socket", "natping_tcp", "nortpproxy_str", "oldip_skip", "ping_nated_only",
            "ping_threshold", "received_avp", "remove_on_timeout_bflag", "sipping_bflag", "sipping_from",
            "sipping_ignore_rpl_codes", "sipping_latency_flag", "sipping_method",
        ),
    ),
    "dispatcher": ModuleExports(
        functions={
            "ds_count": (3, 4), "ds_get_script_attrs": (4, 4), "ds_is_in_list": (2, 6), "ds_mark_dst": (0, 2),
            "ds_next_domain": (0, 1), "ds_next_dst": (0, 1), "ds_push_script_attrs": (3, 5),
            "ds_select_domain": (2, 5), "ds_select_dst": (2, 5),
        },
        params=_params(
            "algo_route", "attrs_avp", "attrs_col", "cluster_id", "cluster_probing_mode", "cluster_sharing_tag",
            "cnt_avp", "db_url", "description_col", "destination_col", "ds_define_blacklist", "ds_ping_from",
            "ds_ping_interval", "ds_ping_maxfwd", "ds_ping_method", "ds_probing_list", "ds_probing_mode",
            "ds_probing_sock", "ds_probing_threshhold", "ds_probing_threshold", "dst_avp", "fetch_freeswitch_stats",
            "grp_avp", "hash_pvar", "max_freeswitch_weight", "options_reply_codes", "partition", "persistent_state",
            "priority_col", "probe_mode_col", "pvar_algo_pattern", "script_attrs_avp", "setid_col", "setid_pvar",
            "sock_avp", "socket_col", "state_col", "table_name", "weight_col",
        ),
    ),
    "load_balancer": ModuleExports(
        functions={
            "lb_count_call": (4, 5), "lb_disable_dst": (0, 0), "lb_is_destination": (2, 5), "lb_is_started": (0, 0),
            "lb_next": (0, 1), "lb_reset": (0, 0), "lb_start": (2, 4), "lb_start_or_next": (2, 4),
            "load_balance": (2, 4),
        },
        params=_params(
            "cluster_id", "cluster_sharing_tag", "db_table", "db_url", "fetch_freeswitch_stats",
            "initial_freeswitch_load", "lb_define_blacklist", "probing_from", "probing_interval", "probing_method",
            "probing_reply_codes", "probing_verbose",
        ),
    ),
    "dialog": ModuleExports(
        functions={
            "create_dialog": (0, 1), "dlg_inc_cseq": (0, 2, '3.6'), "dlg_on_answer": (0, 1), "dlg_on_hangup": (0, 1),
            "dlg_on_timeout": (0, 1), "dlg_send_sequential": (2, 5), "fetch_dlg_value": (2, 2),
            "fix_route_dialog": (0, 0), "get_dialog_info": (5, 5), "get_dialog_vals": (3, 3),
            "get_dialogs_by_profile": (4, 4), "get_dialogs_by_val": (4, 4), "get_profile_size": (3, 3),
            "is_dlg_flag_set": (1, 1), "is_in_profile": (1, 2), "load_dialog_ctx": (1, 2), "match_dialog": (0, 1),
            "reset_dlg_flag": (1, 1), "set_dlg_flag": (1, 1), "set_dlg_profile": (1, 3),
            "set_dlg_sharing_tag": (1, 1), "store_dlg_value": (2, 2), "test_and_set_dlg_flag": (2, 2),
            "unload_dialog_ctx": (0, 0), "unset_dlg_profile": (1, 2), "validate_dialog": (0, 0),
        },
        params=_params(
            "cachedb_url", "call_id_column", "cluster_auto_sync", "db_flush_vals_profiles", "db_mode",
            "db_update_period", "db_url", "default_timeout", "delete_delay", "dialog_replication_cluster",
            "dlg_extra_hdrs", "dlg_id_column", "dlg_match_mode", "enable_stats", "flags_column",
            "from_contact_column", "from_cseq_column", "from_route_column", "from_sock_column", "from_tag_column",
            "from_uri_column", "hash_size", "log_profile_hash_size", "mflags_column", "options_ping_interval",
            "profile_no_value_prefix", "profile_replication_cluster", "profile_size_prefix", "profile_timeout",
            "profile_value_prefix", "profiles_column", "profiles_no_value", "profiles_with_value",
            "race_condition_timeout", "reinvite_ping_interval", "replicate_profiles_buffer",
            "replicate_profiles_check", "replicate_profiles_expire", "replicate_profiles_timer", "rr_param",
            "sflags_column", "start_time_column", "state_column", "table_name", "timeout_column",
            "timer_bulk_del_no", "to_contact_column", "to_cseq_column", "to_route_column", "to_sock_column",
            "to_tag_column", "to_uri_column", "vars_column",
        ),
    ),
    "db_text": ModuleExports(
        functions={

        },
        params=_params(
            "buffer_size@3.6", "db_mode",
        ),
    ),
    "db_sqlite": ModuleExports(
        functions={

        },
        params=_params(
            "alloc_limit", "busy_timeout@3.6", "exec_pragma@3.6", "load_extension",
        ),
    ),
    "db_mysql": ModuleExports(
        functions={

        },
        params=_params(
            "exec_query_threshold", "max_db_queries", "max_db_retries", "ps_max_col_size", "timeout_interval",
            "use_tls",
        ),
    ),
    "db_postgres": ModuleExports(
        functions={

        },
        params=_params(
            "exec_query_threshold", "max_db_queries", "timeout", "use_tls",
        ),
    ),
    "pike": ModuleExports(
        functions={
            "pike_check_req": (0, 0),
        },
        params=_params(
            "check_route", "pike_log_level", "remove_latency", "reqs_density_per_unit", "sampling_time_unit",
        ),
    ),
    "ratelimit": ModuleExports(
        functions={
            "rl_check": (2, 3), "rl_dec_count": (1, 1), "rl_reset_count": (1, 1), "rl_values": (1, 2, '3.6'),
        },
        params=_params(
            "cachedb_url", "db_prefix", "default_algorithm", "expire_time", "hash_size", "limit_per_interval",
            "pipe_replication_cluster", "repl_buffer_threshold", "repl_timer_expire", "repl_timer_interval",
            "slot_period", "timer_interval", "window_size",
        ),
    ),
    "permissions": ModuleExports(
        functions={
            "allow_register": (1, 1), "allow_routing": (0, 1), "allow_uri": (2, 2), "check_address": (4, 7),
            "check_source_address": (1, 4), "get_source_group": (1, 2),
        },
        params=_params(
            "address_table", "allow_suffix", "check_all_branches", "db_url", "default_allow_file",
            "default_deny_file", "deny_suffix", "grp_col", "info_col", "ip_col", "mask_col", "partition",
            "pattern_col", "port_col", "proto_col",
        ),
    ),
    "proto_tls": ModuleExports(
        functions={

        },
        params=_params(
            "cert_check_on_conn_reusage", "tls_async", "tls_async_handshake_timeout",
            "tls_async_local_connect_timeout", "tls_async_max_postponed_chunks", "tls_crlf_drop",
            "tls_crlf_pingpong", "tls_handshake_timeout", "tls_max_msg_chunks", "tls_port", "tls_send_timeout",
            "trace_destination", "trace_filter_route", "trace_on",
        ),
    ),
    "tls_mgm": ModuleExports(
        functions={
            "is_peer_verified": (0, 0), "load_tls_mgm": (0, 0),
        },
        params=_params(
            "ca_dir", "ca_dir_col", "ca_list", "ca_list_col", "certificate", "certificate_col", "ciphers_list",
            "ciphers_list_col", "client_domain", "client_sip_domain_avp", "client_tls_domain_avp", "crl_check_all",
            "crl_check_all_col", "crl_dir", "crl_dir_col", "db_table", "db_url", "dh_params", "dh_params_col",
            "domain_col", "ec_curve", "ec_curve_col", "match_ip_address", "match_ip_address_col", "match_sip_domain",
            "match_sip_domain_col", "private_key", "private_key_col", "require_cert", "require_cert_col",
            "server_domain", "tls_library", "tls_method", "tls_method_col", "verify_cert", "verify_cert_col",
        ),
    ),
}
# fmt: on
